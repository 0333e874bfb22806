"""What the users of one Locust process share: the plan, the recorder, the identity pools, and
the payment service's signing key (from FLASHSALE_PAYMENT_SECRET, which the driver hands every
Locust process) and its mix of misbehaviours (from the plan). Set up once per process, when
Locust initialises (locustfile.py)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import gevent.pool

from flashsale.payments.simulator import PaymentMix
from flashsale.webhooks.signing import parse_secret
from loadtest.plan import Plan
from loadtest.pools import Pool, shared_pool
from loadtest.records import Recorder


@dataclass
class Crowd:
    plan: Plan
    recorder: Recorder
    payment_key: bytes  # winners pay as the payment service would: signed notifications
    payments: PaymentMix  # and misbehave as it does (late, twice, a wrong amount first)
    process_index: int = 0  # a worker's index (pools are shared by claims, not by index)
    # winners on their way to pay, each a greenlet of its own: stopped with the crowd
    checkouts: gevent.pool.Group = field(default_factory=gevent.pool.Group)
    # shoppers waiting with an opening ticket, each a greenlet of its own: stopped likewise
    fans: gevent.pool.Group = field(default_factory=gevent.pool.Group)

    def pool(self, name: str) -> Pool:
        return shared_pool(self.plan.pool_dir, name, self.plan.locust_processes)


_crowd: Crowd | None = None


def setup_crowd(plan: Plan, role: str) -> Crowd:
    global _crowd
    tag = f"{role}-{socket.gethostname()}-{os.getpid()}"
    secret = os.environ.get("FLASHSALE_PAYMENT_SECRET", "").split(",")[0].strip()
    if not secret:
        raise RuntimeError("set FLASHSALE_PAYMENT_SECRET: the crowd's winners pay with it")
    _crowd = Crowd(plan=plan, recorder=Recorder(plan.record_dir, tag),
                   payment_key=parse_secret(secret), payments=plan.payment_mix)  # fmt: skip
    return _crowd


def crowd() -> Crowd:
    if _crowd is None:
        raise RuntimeError("the crowd is not set up: run Locust with --plan PLAN.json")
    return _crowd
