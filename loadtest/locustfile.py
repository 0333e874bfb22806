"""Locust entry point of the launch-day rehearsal.

    PYTHONPATH=. locust -f loadtest/locustfile.py --config loadtest/locust.conf \\
        --host http://127.0.0.1:8080 --plan out/rehearsal/plan.json

The plan (loadtest/plan.py) is written by ``python -m loadtest.rehearsal``, which also sets up
the sale, the bookings, the F-codes and the shoppers' tokens; running Locust by hand needs one.
The process that owns the load shape (local or master) watches the sale and stops the crowd
once it is sold out (plus ``drain_s``) or after ``max_s``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import gevent
from locust import LoadTestShape, events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtest import start_gate
from loadtest.context import crowd, setup_crowd
from loadtest.crowd_users import BookedShopper, Bot, FcodeHolder, LateArrival
from loadtest.plan import Plan
from loadtest.pools import loaded_pools
from loadtest.watcher import WATCHER

__all__ = ["BookedShopper", "Bot", "FcodeHolder", "LateArrival", "LaunchShape"]

log = logging.getLogger(__name__)


@events.init_command_line_parser.add_listener
def _add_plan_option(parser: Any) -> None:
    parser.add_argument("--plan", help="the rehearsal's plan.json", include_in_web_ui=False)


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None or not options.plan:
        raise SystemExit("loadtest/locustfile.py needs --plan PLAN.json (see its docstring)")
    plan = Plan.load(options.plan)
    runner = environment.runner
    role = "master" if isinstance(runner, MasterRunner) else "local"
    if isinstance(runner, WorkerRunner):
        role = "worker"
    setup_crowd(plan, role)
    # a fixed count is a class attribute; the master needs it to share users out
    FcodeHolder.fixed_count = plan.fcode_users
    Bot.fixed_count = plan.bot_users


def _owns_shape(environment: Environment) -> bool:
    return not isinstance(environment.runner, WorkerRunner)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    c = crowd()
    if c.plan.opens_on_start:  # the Start button: the driver opens the sale now
        if _owns_shape(environment):
            start_gate.announce_start(c.plan.record_dir)
        opens_at = start_gate.wait_for_opening(c.plan.record_dir, sleep=gevent.sleep)
        c.plan = replace(c.plan, opens_at=opens_at)
        log.info("rehearsal: the sale opens at %.3f", opens_at)
    if _owns_shape(environment):
        WATCHER.start(c.plan)


@events.request.add_listener
def _on_request(
    name: str, response_time: float, exception: Any, start_time: float | None = None, **_: Any
) -> None:
    if start_time is not None:
        crowd().recorder.request(name, start_time, response_time, exception is not None)


def _flush(environment: Environment) -> None:
    if isinstance(environment.runner, MasterRunner):
        return  # a master sends no requests: its workers write their own records
    c = crowd()
    pools = {
        name: {"size": len(pool), "taken": pool.taken, "reused": pool.reused}
        for name, pool in loaded_pools().items()
    }
    c.recorder.flush({"pools": pools})


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    if _owns_shape(environment):
        WATCHER.stop()
    crowd().fans.kill(block=True, timeout=2)
    crowd().checkouts.kill(block=True, timeout=2)
    _flush(environment)


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    _flush(environment)


class LaunchShape(LoadTestShape):
    """The whole crowd within ``ramp_s``, held until the sale is sold out (and ``drain_s``
    more, for payments and late arrivals) or ``max_s`` have passed."""

    def tick(self) -> tuple[int, float] | None:
        plan = crowd().plan
        if self.get_run_time() > plan.max_s:
            log.info("rehearsal: max time %.0f s reached", plan.max_s)
            return None
        sold_out_at = WATCHER.sold_out_at
        if sold_out_at is not None and time.time() > sold_out_at + plan.drain_s:
            return None
        return plan.users, plan.users / max(plan.ramp_s, 0.1)
