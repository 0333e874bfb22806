"""What the users of one Locust process share: the plan, the recorder and the identity
pools. Set up once per process, when Locust initialises (locustfile.py)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import gevent.pool

from loadtest.plan import Plan
from loadtest.pools import Pool, shared_pool
from loadtest.records import Recorder


@dataclass
class Crowd:
    plan: Plan
    recorder: Recorder
    process_index: int = 0
    # winners on their way to pay, each a greenlet of its own: stopped with the crowd
    checkouts: gevent.pool.Group = field(default_factory=gevent.pool.Group)

    def pool(self, name: str) -> Pool:
        return shared_pool(self.plan.pool_dir, name, self.process_index, self.plan.locust_processes)


_crowd: Crowd | None = None


def setup_crowd(plan: Plan, role: str) -> Crowd:
    global _crowd
    tag = f"{role}-{socket.gethostname()}-{os.getpid()}"
    _crowd = Crowd(plan=plan, recorder=Recorder(plan.record_dir, tag))
    return _crowd


def crowd() -> Crowd:
    if _crowd is None:
        raise RuntimeError("the crowd is not set up: run Locust with --plan PLAN.json")
    return _crowd
