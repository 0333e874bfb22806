"""The sale's timeline and the report's headline.

One source for when units went: the orders in PostgreSQL, each created at the moment the
service reserved its unit (``orders.created_at``, the Redis clock the sale's opening is kept
by) and, if the unit came back, expired or cancelled at ``updated_at``. The units left over
time, the buys a second, the sell-out moment and the sale window all come from it, so the
chart and the report cannot disagree with each other (the operator's samples of the public
sale are answered seconds after they were asked on a busy machine, and the crowd records a 201
when it reads it: neither is when the unit went).

The headline is the sale window: from the opening second to the last unit (the sell-out, or
the last unit sold of a sale that did not sell out). Figures over the whole run (from the
crowd's first request to its last, the sold_out answers after the sell-out included) come
second, and the report says how Locust's own figures relate to both.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from loadtest.plan import Plan
from loadtest.records import BUY
from loadtest.rehearsal.records_in import Records

SERVICE_CLOCK = "the service's clock (orders.created_at in PostgreSQL)"
CROWD_CLOCK = "the crowd's clock (when it read each 201: PostgreSQL's order times were missing)"


@dataclass(frozen=True)
class Timeline:
    """Units held (reserved or paid) over time: ``held[i]`` from ``times[i]`` on."""

    stock: int
    times: np.ndarray  # epoch seconds of each change, sorted
    held: np.ndarray  # units held after it
    created: np.ndarray  # epoch seconds each unit was taken (an order of n units: n times)
    clock: str = SERVICE_CLOCK

    @property
    def sold_out_at(self) -> float | None:
        """The first moment every unit was held: the last unit went."""
        full = np.nonzero(self.held >= self.stock)[0]
        return float(self.times[full[0]]) if full.size and self.stock > 0 else None

    def held_at(self, t: float) -> int:
        i = int(np.searchsorted(self.times, t, side="right")) - 1
        return int(self.held[i]) if i >= 0 else 0

    def left_at(self, t: float) -> int:
        return max(0, self.stock - self.held_at(t))

    def last_unit_at(self, until: float | None = None) -> float | None:
        """When the last unit went: the sell-out, or the last order taken (by ``until``)."""
        if (sold := self.sold_out_at) is not None:
            return sold
        taken = self.created if until is None else self.created[self.created <= until]
        return float(taken.max()) if taken.size else None

    def taken_between(self, begin: float, end: float) -> int:
        return int(((self.created >= begin) & (self.created <= end)).sum())


def _epoch(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def timeline_from_orders(orders: Iterable[Mapping[str, Any]], stock: int) -> Timeline:
    """From orders (``created_at``, ``updated_at``, ``expires_at``, ``status``, ``quantity``):
    a unit is taken when its order is created and comes back when the order expires or is
    cancelled; an order paid after it expired (paid late) held no unit from its expiry to
    its payment."""
    changes: list[tuple[float, int]] = []
    created: list[float] = []
    for o in orders:
        n = int(o.get("quantity", 1))
        at = _epoch(o["created_at"])
        changes.append((at, n))
        created += [at] * n
        updated = _epoch(o["updated_at"])
        if o["status"] in ("expired", "cancelled"):
            changes.append((updated, -n))
        elif o["status"] == "paid" and updated > (expired := _epoch(o["expires_at"])):
            changes += [(expired, -n), (updated, n)]
    changes.sort()
    times = np.array([t for t, _ in changes], dtype=np.float64)
    held = np.cumsum(np.array([d for _, d in changes], dtype=np.int64))
    return Timeline(stock, times, held, np.sort(np.array(created, dtype=np.float64)))


def timeline_from_records(records: Records, stock: int) -> Timeline:
    """The crowd's 201s as a timeline, when PostgreSQL's order times are not available."""
    taken = np.sort(np.array([e["t"] for e in records.reserved.values()], dtype=np.float64))
    held = np.arange(1, taken.size + 1, dtype=np.int64)
    return Timeline(stock, taken, held, taken, clock=CROWD_CLOCK)


async def fetch_timeline(database_url: str, sale_id: str, stock: int) -> Timeline:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT created_at, updated_at, expires_at, status, quantity FROM orders "
            "WHERE sale_id = $1",
            sale_id,
        )
    finally:
        await conn.close()
    return timeline_from_orders((dict(r) for r in rows), stock)


def crowd_span(records: Records) -> tuple[float, float] | None:
    """From the crowd's first request to the end of its last (epoch s)."""
    if not records.start.size:
        return None
    return float(records.start.min()), float((records.start + records.ms / 1000).max())


def sale_timing(plan: Plan, records: Records, timeline: Timeline) -> dict[str, Any]:
    """When the sale opened (for the crowd), when the last unit went, and the buy rate over
    the sale window, all on the timeline's clock."""
    span = crowd_span(records)
    first_request = span[0] if span else plan.opens_at
    # a setup that overran the planned start: the sale opened for the crowd when it came
    opened = max(plan.opens_at, first_request)
    crowd_end = span[1] if span else None
    sold_out_at = timeline.sold_out_at
    last = timeline.last_unit_at(crowd_end)
    window = (last - opened) if last is not None and last > opened else None
    buys = timeline.taken_between(opened, last) if last is not None else 0
    in_sale = None
    if last is not None:
        in_sale = int(((records.start >= opened) & (records.start <= last)).sum())
    return {
        "clock": timeline.clock,
        "opened_at": opened,
        "crowd_late_s": round(max(0.0, first_request - plan.opens_at), 2),
        "sold_out": sold_out_at is not None,
        "sellout_at": sold_out_at,
        "last_unit_at": last,
        "window_s": round(window, 3) if window is not None else None,
        "sellout_s": round(sold_out_at - opened, 3) if sold_out_at is not None else None,
        "buys": buys,
        "buys_per_s": round(buys / window, 1) if window else None,
        "requests_per_s_during_sale": (
            round(in_sale / window, 1) if in_sale is not None and window else None
        ),
        "answered_201": len(records.reserved),
        "crowd_started_at": first_request if span else None,
        "crowd_ended_at": crowd_end,
        "units_left_when_crowd_stopped": (
            timeline.left_at(crowd_end) if crowd_end is not None else None
        ),
    }


def headline(
    timing: Mapping[str, Any],
    during: Mapping[str, Mapping[str, Any]],
    whole: Mapping[str, Mapping[str, Any]],
    records: Records,
) -> dict[str, Any]:
    """The figures of the sale window first; the whole run's beside them."""
    buy, all_during = during.get(BUY, {}), during.get("Aggregated", {})
    span = crowd_span(records)
    return {
        "window": "from the opening second to the last unit",
        "clock": timing["clock"],
        "window_s": timing["window_s"],
        "sold_out": timing["sold_out"],
        "sellout_s": timing["sellout_s"],
        "buys_per_s": timing["buys_per_s"],
        "requests_per_s": all_during.get("requests_per_s"),
        "buy_requests_per_s": buy.get("requests_per_s"),
        "buy_p50_ms": buy.get("p50_ms"),
        "buy_p95_ms": buy.get("p95_ms"),
        "buy_p99_ms": buy.get("p99_ms"),
        "p99_ms": all_during.get("p99_ms"),
        "whole_run": {
            "window": "from the crowd's first request to the end of its last",
            "seconds": round(span[1] - span[0], 3) if span else None,
            "requests": whole.get("Aggregated", {}).get("requests", 0),
            "requests_per_s": whole.get("Aggregated", {}).get("requests_per_s"),
            "buy_requests_per_s": whole.get(BUY, {}).get("requests_per_s"),
            "buy_p99_ms": whole.get(BUY, {}).get("p99_ms"),
            "p99_ms": whole.get("Aggregated", {}).get("p99_ms"),
        },
    }


def _locust_rows(path: Path) -> dict[str, dict[str, float]]:
    rows = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows[row["Name"]] = {
                    "requests": float(row["Request Count"]),
                    "requests_per_s": float(row["Requests/s"]),
                }
            except (KeyError, ValueError):
                continue
    return rows


def _locust_started(history: Path) -> float | None:
    """The first second of Locust's history: when its test started (whole seconds)."""
    try:
        with history.open(newline="") as f:
            for row in csv.DictReader(f):
                return float(row["Timestamp"])
    except (OSError, KeyError, ValueError):
        return None
    return None


def compare_with_locust(out: Path, report: Mapping[str, Any]) -> dict[str, Any] | None:
    """Locust's own counts and rates (its CSV) beside the report's, and why they differ:
    Locust divides every endpoint's count by the same span, from the start of its test to its
    last request; the report's headline is the sale window, its whole run the crowd's first
    request to its last."""
    stats = out / "locust_stats.csv"
    if not stats.exists():
        return None
    rows = _locust_rows(stats)
    total = rows.get("Aggregated")
    if not total or not total["requests_per_s"]:
        return None
    span = total["requests"] / total["requests_per_s"]
    started = _locust_started(out / "locust_stats_history.csv")
    opened = report["timing"]["opened_at"]
    before = round(opened - started, 1) if started is not None else None
    whole, during = report["endpoints"], report["endpoints_during_sale"]
    endpoints = {}
    for name, row in rows.items():
        endpoints[name] = {
            "locust_requests": int(row["requests"]),
            "locust_requests_per_s": round(row["requests_per_s"], 1),
            "requests": whole.get(name, {}).get("requests", 0),
            "requests_per_s_whole_run": whole.get(name, {}).get("requests_per_s"),
            "requests_per_s_sale_window": during.get(name, {}).get("requests_per_s"),
        }
    missing = report["requests"] - int(total["requests"])
    why = [
        f"Locust's Requests/s divides each endpoint's count by the same {span:.1f} s: from the "
        "start of its test"
        + (f" ({before:.0f} s before the opening second, the users waiting for it)" if before
           else "")
        + " to its last request, the ramp-up, the wait for the opening and the crowd's drain "
        f"after the sell-out included; the headline's rates are over the sale window "
        f"({report['timing']['window_s'] or 0:.2f} s), the whole run's from the crowd's first "
        f"request to its last ({report['headline']['whole_run']['seconds'] or 0:.1f} s)",
    ]  # fmt: skip
    if missing > 0:
        why.append(
            f"Locust's CSV, rewritten once a second and not at its end, lacks the last "
            f"{missing:,} request(s) the crowd recorded"
        )
    elif missing < 0:
        why.append(f"Locust's CSV counts {-missing:,} request(s) more than the crowd recorded")
    why.append("Locust rounds latencies to whole milliseconds; the report keeps them exact")
    return {
        "span_s": round(span, 2),
        "started_before_opening_s": before,
        "endpoints": endpoints,
        "why_they_differ": why,
    }
