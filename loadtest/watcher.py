"""The operator's view during the run, written to ``samples.jsonl``:

- ``units`` samples every half second from the public sale (Redis only, cheap): units left
  in both lanes, for the chart and to tell the load shape the sale is sold out;
- ``stats`` samples from the admin stats endpoint (units by state, orders already in
  PostgreSQL), back to back but never more than half the time asking: the stats count the
  sale's bookings in PostgreSQL, real work with millions of them. Each records how long the
  endpoint took.

Runs in the Locust process that owns the load shape (local or master).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import gevent

from loadtest.plan import Plan

log = logging.getLogger(__name__)
UNITS_INTERVAL_S = 0.5
STATS_MIN_INTERVAL_S = 0.5
TIMEOUT_S = 10.0


def _get(url: str, token: str | None = None) -> dict[str, Any]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
        body: dict[str, Any] = json.load(resp)
        return body


def units_sample(plan: Plan) -> dict[str, Any]:
    sale = _get(f"{plan.base_url.rstrip('/')}/v1/sales/{plan.sale_id}")["sale"]
    return {
        "kind": "units",
        "status": sale["status"],
        "available": sale["available"],
        "fcode_available": sale["fcode_available"],
    }


def stats_sample(plan: Plan, admin_token: str) -> dict[str, Any]:
    url = f"{plan.base_url.rstrip('/')}/v1/admin/sales/{plan.sale_id}/stats"
    stats = _get(url, admin_token)["stats"]
    pg = stats["orders_in_postgres"]
    return {
        "kind": "stats",
        **{k: stats[k] for k in ("available", "reserved", "paid", "expired", "cancelled")},
        "paid_late": stats.get("paid_late", 0),
        "pg_orders": pg["total"],
        "pg_paid": pg["paid"],
    }


class SaleWatcher:
    def __init__(self) -> None:
        self.sold_out_at: float | None = None  # epoch seconds of the first sold-out sample
        self._greenlets: list[gevent.Greenlet] = []
        self._out: IO[str] | None = None

    def start(self, plan: Plan) -> None:
        if self._greenlets:
            return
        self._out = (Path(plan.record_dir) / "samples.jsonl").open("a", buffering=1)
        token = os.environ["FLASHSALE_ADMIN_TOKEN"]
        self._greenlets = [
            gevent.spawn(self._loop, "units", lambda: self._units(plan), UNITS_INTERVAL_S),
            gevent.spawn(self._loop, "stats", lambda: stats_sample(plan, token), None),
        ]

    def stop(self) -> None:
        gevent.killall(self._greenlets, block=True, timeout=2)
        self._greenlets = []
        if self._out is not None:
            self._out.close()
            self._out = None

    def _units(self, plan: Plan) -> dict[str, Any]:
        s = units_sample(plan)
        gone = s["available"] <= 0 and s["fcode_available"] <= 0
        if gone and self.sold_out_at is None and time.time() >= plan.opens_at:
            self.sold_out_at = time.time()
            log.info("sale %s sold out", plan.sale_id)
        return s

    def _loop(
        self, kind: str, take: Callable[[], dict[str, Any]], interval_s: float | None
    ) -> None:
        while True:
            t, started = time.time(), time.monotonic()
            try:
                s = {"t": t, **take()}
            except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
                # the service too busy to answer the operator is itself a finding
                s = {"t": t, "kind": kind, "error": f"{type(exc).__name__}: {exc}"[:200]}
                log.warning("sale watcher (%s): %s", kind, s["error"])
            took = time.monotonic() - started
            s["ms"] = round(took * 1000, 1)
            if self._out is not None:
                self._out.write(json.dumps(s) + "\n")
            pause = interval_s - took if interval_s is not None else max(STATS_MIN_INTERVAL_S, took)
            gevent.sleep(max(0.0, pause))


WATCHER = SaleWatcher()
