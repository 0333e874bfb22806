"""The correctness verdict: the service's promises, checked against what the crowd was told.

1. Never oversold: units reserved + paid never above the stock (every watcher sample, the end
   state, and the count of 201 answers against the stock plus the units that came back).
2. Nobody above the per-user limit (PostgreSQL's orders grouped by user, and the 201s).
3. Every order answered 201 is in PostgreSQL, for the shopper it was answered to, and every
   payment answered 200 is paid there; waited for up to ``PG_WAIT_S`` (the writer is
   asynchronous), and PostgreSQL's counts must then agree with Redis.
4. The units add up: paid + reserved + available (both lanes) = stock.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from loadtest.plan import Plan
from loadtest.rehearsal.api import Api
from loadtest.rehearsal.records_in import Records
from loadtest.rehearsal.stores import fetch_orders, users_over_limit

PG_WAIT_S = 10.0


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    pg_wait_s: float = 0.0  # how long the verdict waited for PostgreSQL to hold everything
    pg_complete_at: float | None = None  # epoch seconds when it did; None if it never did
    units: dict[str, Any] = field(default_factory=dict)  # the end state (Redis)
    # what the plan expected and did not happen (a sale it expected to sell out that did
    # not): no promise of the service broken, but the rehearsal did not rehearse its launch
    failed_expectations: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.violations or self.failed_expectations)


def _redis_orders(units: dict[str, Any]) -> int:
    # every order is one unit (the crowd buys one at a time), whatever became of it; an order
    # paid after its expiry counts among the expired units too (paid_late of them)
    return int(
        units["reserved"]
        + units["paid"]
        + units["expired"]
        + units["cancelled"]
        - units.get("paid_late", 0)
    )


def _pg_agrees(units: dict[str, Any]) -> bool:
    pg = units["orders_in_postgres"]
    return bool(pg["total"] == _redis_orders(units) and pg["paid"] == units["paid"])


async def wait_for_postgres(
    api: Api, database_url: str, plan: Plan, records: Records, v: Verdict
) -> dict[str, dict[str, Any]]:
    started = time.monotonic()
    while True:
        pg = await fetch_orders(database_url, plan.sale_id)
        v.units = api.units(plan.sale_id)
        missing = [o for o in records.reserved if o not in pg]
        unpaid = [o for o in records.paid if pg.get(o, {}).get("status") != "paid"]
        if not missing and not unpaid and _pg_agrees(v.units):
            v.pg_complete_at = time.time()
            break
        if time.monotonic() - started > PG_WAIT_S:
            if missing:
                v.violations.append(
                    f"{len(missing)} order(s) answered 201 are not in PostgreSQL "
                    f"after {PG_WAIT_S:.0f} s, e.g. {missing[:3]}"
                )
            if unpaid:
                v.violations.append(
                    f"{len(unpaid)} payment(s) answered 200 are not paid in "
                    f"PostgreSQL after {PG_WAIT_S:.0f} s, e.g. {unpaid[:3]}"
                )
            if not _pg_agrees(v.units):
                v.violations.append(
                    f"PostgreSQL disagrees with Redis after {PG_WAIT_S:.0f} s: orders "
                    f"{v.units['orders_in_postgres']} vs {_redis_orders(v.units)} in Redis "
                    f"({v.units['paid']} paid)"
                )
            break
        await asyncio.sleep(0.2)
    v.pg_wait_s = round(time.monotonic() - started, 2)
    return pg


async def judge(api: Api, database_url: str, plan: Plan, records: Records) -> Verdict:
    v = Verdict()
    if not records.start.size:
        v.violations.append("the crowd sent no requests: nothing was rehearsed (see locust.log)")
    pg = await wait_for_postgres(api, database_url, plan, records, v)
    u, stock = v.units, plan.stock
    if records.duplicate_201s:
        v.violations.append(f"{len(records.duplicate_201s)} order id(s) answered 201 twice")
    wrong_user = [
        o for o, e in records.reserved.items() if o in pg and pg[o]["user_id"] != e["user"]
    ]
    if wrong_user:
        v.violations.append(f"{len(wrong_user)} order(s) belong to another user in PostgreSQL")

    # 1. never oversold
    if u["reserved"] + u["paid"] > stock:
        v.violations.append(
            f"oversold: {u['reserved'] + u['paid']} units reserved or paid of {stock}"
        )
    worst = max((s["reserved"] + s["paid"] for s in records.samples if "paid" in s), default=0)
    if worst > stock:
        v.violations.append(f"oversold during the sale: {worst} units taken of {stock}")
    came_back = u["expired"] + u["cancelled"]
    if len(records.reserved) > stock + came_back:
        v.violations.append(
            f"{len(records.reserved)} buys answered 201 for {stock} units "
            f"(+{came_back} that came back)"
        )

    # 2. the per-user limit
    over = await users_over_limit(database_url, plan.sale_id, plan.per_user_limit)
    if over:
        v.violations.append(
            f"{len(over)} shopper(s) above the limit of {plan.per_user_limit} "
            f"in PostgreSQL, e.g. {over[:3]}"
        )
    active = Counter(
        e["user"]
        for o, e in records.reserved.items()
        if pg.get(o, {}).get("status", "reserved") in ("reserved", "paid")
    )
    over_201 = [(user, n) for user, n in active.items() if n > plan.per_user_limit]
    if over_201:
        v.violations.append(
            f"{len(over_201)} shopper(s) answered 201 above the limit, e.g. {over_201[:3]}"
        )

    # 4. the units add up
    total = u["paid"] + u["reserved"] + u["available"] + u["fcode_available"]
    if total != stock:
        v.violations.append(
            f"units do not add up: paid {u['paid']} + reserved {u['reserved']} "
            f"+ available {u['available']} + F-code lane "
            f"{u['fcode_available']} = {total}, stock {stock}"
        )
    return v


def expect_sellout(v: Verdict, expected: str | None, timing: dict[str, Any]) -> None:
    """A sale the plan expected to sell out (``expected`` says why it should have; None when
    it was not expected to) that did not, while the crowd was there, is a failed
    expectation."""
    if expected is None or timing["sold_out"]:
        return
    left = timing.get("units_left_when_crowd_stopped")
    ran = (timing.get("crowd_ended_at") or 0) - timing["opened_at"]
    v.failed_expectations.append(
        f"the sale did not sell out: {'some' if left is None else f'{left:,}'} unit(s) left "
        f"when the crowd stopped, {max(0.0, ran):.0f} s after the opening; the plan expected "
        f"it to ({expected})"
    )
