"""The checkout hand-off's part of the verdict, once the crowd has gone.

1. **Late payments.** The crowd left the orders the payment service pays late to the driver
   (records "late"): they are paid here, after their reservations expired, through the
   simulated payment service (flashsale/payments/simulator.py), and every answer judged: paid
   late, or refund_required reservation_expired.
2. **Rest.** The sale comes to rest: no unit held any more (the unpaid reservations expired),
   so nothing changes after; then PostgreSQL holds every order and payment (verdict.py).
3. **Events.** Every order's events arrived, in order (flashsale/handoff_checks.py), from the
   rehearsal's receiver or the pull API (events_in.py), waited for up to ``--events-wait``
   seconds; with how long after its change each event came, and when the last event of the
   sale (the orders PostgreSQL held when the verdict first found it complete) arrived.
4. **The checks** of handoff_checks.py, each a line of the report.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from flashsale.handoff_checks import (
    Check,
    EventFindings,
    ExpectedEvents,
    check_events,
    expected_events,
    held_units,
    payment_checks,
    units_check,
)
from flashsale.payments.simulator import Kind, PaymentService, Settlement
from loadtest.plan import Plan
from loadtest.records import PAY
from loadtest.rehearsal.api import Api
from loadtest.rehearsal.events_in import PulledEvents, ReceiverThread
from loadtest.rehearsal.records_in import Records
from loadtest.rehearsal.verdict import Verdict, wait_for_postgres

REST_MARGIN_S = 60.0  # beyond the reservation time, for the sweeper and a busy machine
NO_REASON = "refund_required without a reason"


@dataclass
class Handoff:
    checks: list[Check] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    events: dict[str, Any] = field(default_factory=dict)
    late_payments: dict[str, Any] = field(default_factory=dict)
    rest_s: float | None = None  # from the crowd's end to the sale at rest

    def report(self) -> dict[str, Any]:
        return {
            "checks": [c.to_json() for c in self.checks],
            "events": self.events,
            "late_payments": self.late_payments,
            "rest_s": self.rest_s,
        }


async def judge_handoff(
    api: Api,
    database_url: str,
    payment_secret: str,
    plan: Plan,
    records: Records,
    verdict: Verdict,
    source: ReceiverThread | PulledEvents,
    *,
    reservation_ttl_s: float,
    events_wait_s: float,
) -> Handoff:
    h = Handoff()
    started = time.monotonic()
    settlements = await _pay_late(api.base, payment_secret, plan, records)
    h.late_payments = _late_summary(settlements)
    for s in settlements:
        if s.paid:  # the verdict then finds it paid in PostgreSQL too
            records.paid[s.order_id] = {"order_id": s.order_id, "event": "paid"}
        h.violations += [f"late payment of {s.order_id}: {p}" for p in s.problems]

    held = [s["reserved"] + s["paid"] for s in records.samples if "paid" in s and "error" not in s]
    held += await _come_to_rest(api, plan.sale_id, reservation_ttl_s + REST_MARGIN_S)
    h.rest_s = round(time.monotonic() - started, 1)
    settled = Verdict()
    await wait_for_postgres(api, database_url, plan, records, settled)
    h.violations += settled.violations

    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        findings, expected = await _events(conn, plan.sale_id, source, events_wait_s)
        answered = sum(n for (e, p), n in records.problems.items() if e == PAY and p == NO_REASON)
        answered += sum(s.problems.count(NO_REASON) for s in settlements)
        h.checks = await payment_checks(conn, plan.sale_id, answered_without_reason=answered)
    finally:
        await conn.close()
    h.checks += [findings.check(), units_check(plan.stock, held)]
    h.violations += [f"{c.name}: {c.detail}" for c in h.checks if not c.ok]
    h.events = _events_report(findings, expected, verdict, source)
    return h


async def _pay_late(base_url: str, secret: str, plan: Plan, records: Records) -> list[Settlement]:
    if not records.late:
        return []
    service = PaymentService(base_url, secret, mix=plan.payment_mix)
    try:
        orders = [
            {"order_id": o, "amount_cents": e["amount_cents"], "currency": e["currency"],
             "expires_at": e["expires_at"]}
            for o, e in records.late.items()
        ]  # fmt: skip
        # each waits for its own deadline; aiohttp's connection limit paces the sending
        return list(await asyncio.gather(*(service.settle(o, kind=Kind.LATE) for o in orders)))
    finally:
        await service.close()


def _late_summary(settlements: list[Settlement]) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    for s in settlements:
        for a in s.answers:
            paid = a["outcome"] == "paid"
            outcomes["paid late" if paid else f"refund_required {a['reason']}"] += 1
    problems = Counter(p for s in settlements for p in s.problems)
    return {
        "orders": len(settlements),
        "paid_late": sum(s.late for s in settlements),
        "answers": dict(outcomes.most_common()),
        "problems": dict(problems.most_common()),
    }


async def _come_to_rest(api: Api, sale_id: str, timeout_s: float) -> list[int]:
    """Wait until the sale holds no unit (every reservation paid, cancelled or expired); the
    paid + held units of each look."""
    held = []
    deadline = time.monotonic() + timeout_s
    while True:
        stats = await asyncio.to_thread(api.stats, sale_id)
        held.append(held_units(stats))
        if stats["reserved"] == 0 or time.monotonic() > deadline:
            return held
        await asyncio.sleep(0.5)


async def _events(
    conn: asyncpg.Connection,
    sale_id: str,
    source: ReceiverThread | PulledEvents,
    wait_s: float,
) -> tuple[EventFindings, ExpectedEvents]:
    deadline = time.monotonic() + wait_s
    ordered = isinstance(source, ReceiverThread)
    while True:
        # what arrived first: PostgreSQL then holds every change it tells of (and more)
        if isinstance(source, ReceiverThread):
            arrivals = source.arrivals()
        else:
            arrivals = await asyncio.to_thread(source.pull)
        late = time.monotonic() > deadline
        # the whole check only once as many have arrived as the outbox holds: it takes this
        # process's time, which the receiver's thread shares
        if late or len(arrivals) >= await conn.fetchval(_OUTBOX_ROWS, sale_id):
            expected = await expected_events(conn, sale_id)
            findings = check_events(sale_id, arrivals, expected, ordered=ordered)
            if findings.complete or late:
                return findings, expected
        await asyncio.sleep(0.5)


_OUTBOX_ROWS = "SELECT count(*) FROM outbox WHERE sale_id = $1"


def _events_report(
    findings: EventFindings,
    expected: ExpectedEvents,
    verdict: Verdict,
    source: ReceiverThread | PulledEvents,
) -> dict[str, Any]:
    report = findings.to_json()
    if isinstance(source, ReceiverThread):
        report |= {"source": "receiver", "receiver_url": source.url, "refused": source.refused}
    else:
        report |= {"source": "GET /v1/admin/events"}
    # the sale's own events: those written by the time the verdict found PostgreSQL holding
    # every order answered 201 and every payment answered paid
    at = verdict.pg_complete_at
    sale_done = findings.delivered_by(expected, at) if at is not None else None
    report["all_orders_in_postgres_at"] = at
    report["their_events_delivered_at"] = sale_done
    report["their_events_delivered_after_s"] = (
        round(sale_done - at, 3) if sale_done is not None and at is not None else None
    )
    return report
