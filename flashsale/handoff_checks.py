"""What the demo and the rehearsal check of the checkout hand-off once a sale has come to rest,
each as one verdict line (``Check``):

- **every paid order has exactly one paid payment**: in PostgreSQL, each order of the sale
  whose status is ``paid`` has one payment with outcome ``paid``, and no other order has any;
- **every refund_required payment has a reason**: in PostgreSQL, and in every answer the
  payment service was given;
- **every order's events arrived, in order**: for each order of the sale, whose version in
  PostgreSQL is n, the events of sequences 1 to n are in the outbox and arrived, without a
  gap and (where delivery order is promised) first in sequence order; an event may arrive
  more than once, always with the same event id;
- **paid + held units never exceeded the stock**: over every sample taken during the sale and
  after it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from flashsale.outbox.receiver import Arrival

PAID_ONCE = "every paid order has exactly one paid payment"
REASONS = "every refund_required payment has a reason"
EVENTS = "every order's events arrived, in order"
UNITS = "paid + held units never exceeded the stock"

_EXAMPLES = 3


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"check: {self.name}: {'ok' if self.ok else 'FAILED'} ({self.detail})"

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


# per order of the sale, its status and how many payments it has with outcome "paid"
_PAID_ONCE = """
SELECT o.order_id, o.status, p.paid
FROM orders o
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE outcome = 'paid') AS paid FROM payments
    WHERE payments.order_id = o.order_id) p
WHERE o.sale_id = $1 AND (o.status = 'paid') <> (p.paid = 1)
"""

_PAID_ORDERS = "SELECT count(*) FROM orders WHERE sale_id = $1 AND status = 'paid'"

_REFUNDS = """
SELECT coalesce(reason, '') AS reason, count(*) AS n FROM payments
WHERE sale_id = $1 AND outcome = 'refund_required' GROUP BY 1 ORDER BY 2 DESC, 1
"""


async def payment_checks(
    conn: asyncpg.Connection | asyncpg.Pool, sale_id: str, *, answered_without_reason: int = 0
) -> list[Check]:
    """The two payment lines for ``sale_id``, from PostgreSQL; ``answered_without_reason``:
    refund_required answers the payment service got without a reason."""
    wrong = await conn.fetch(_PAID_ONCE, sale_id)
    paid_orders: int = await conn.fetchval(_PAID_ORDERS, sale_id)
    if wrong:
        shown = ", ".join(f"{r['order_id']} {r['status']} with {r['paid']}" for r in wrong[:3])
        paid_once = Check(PAID_ONCE, False, f"{len(wrong):,} order(s) do not, e.g. {shown}")
    else:
        paid_once = Check(PAID_ONCE, True, f"{paid_orders:,} paid orders")
    refunds = {r["reason"]: int(r["n"]) for r in await conn.fetch(_REFUNDS, sale_id)}
    without = refunds.pop("", 0)
    total = without + sum(refunds.values())
    by_reason = ", ".join(f"{reason} {n:,}" for reason, n in refunds.items())
    detail = f"{total:,} refund_required payment(s)" + (f": {by_reason}" if by_reason else "")
    if without or answered_without_reason:
        detail += (
            f"; {without:,} without a reason in PostgreSQL, "
            f"{answered_without_reason:,} answered without one"
        )
    return [paid_once, Check(REASONS, not without and not answered_without_reason, detail)]


def units_check(stock: int, held: Iterable[int]) -> Check:
    """``held``: paid + reserved units, one figure per sample."""
    samples = list(held)
    worst = max(samples, default=0)
    return Check(
        UNITS,
        bool(samples) and worst <= stock,
        f"at most {worst:,} of {stock:,} units paid or held, over {len(samples):,} samples",
    )


@dataclass
class ExpectedEvents:
    """What PostgreSQL says a sale's events are: per order its version (the last sequence),
    the outbox's event id of each (order, sequence), and when the last one was written."""

    versions: dict[str, int] = field(default_factory=dict)
    ids: dict[tuple[str, int], str] = field(default_factory=dict)
    # Unix seconds when each event's transaction began (its change was written with it)
    written_at: dict[tuple[str, int], float] = field(default_factory=dict)
    last_written_at: float | None = None

    @property
    def count(self) -> int:
        return sum(self.versions.values())


_EXPECTED = """
SELECT r.order_id, r.version, o.sequence, o.event_id, extract(epoch FROM o.created_at) AS at
FROM orders r LEFT JOIN outbox o ON o.order_id = r.order_id
WHERE r.sale_id = $1
"""


async def expected_events(conn: asyncpg.Connection | asyncpg.Pool, sale_id: str) -> ExpectedEvents:
    found = ExpectedEvents()
    for r in await conn.fetch(_EXPECTED, sale_id):
        found.versions[r["order_id"]] = r["version"]
        if r["sequence"] is not None:
            key = (r["order_id"], r["sequence"])
            found.ids[key] = r["event_id"]
            at = found.written_at[key] = float(r["at"])
            if found.last_written_at is None or at > found.last_written_at:
                found.last_written_at = at
    return found


@dataclass
class EventFindings:
    """The arrivals of one sale's events against what PostgreSQL holds."""

    ordered: bool  # whether first arrivals must come in sequence order (the relay's promise)
    orders: int = 0
    expected: int = 0  # events: the sum of the orders' versions
    arrived: int = 0  # of those, how many arrived
    deliveries: int = 0  # arrivals of the sale's events, repeats included
    repeats: int = 0  # arrivals of an event that had arrived already (same id)
    missing: list[str] = field(default_factory=list)  # "order#sequence" never arrived
    not_in_outbox: list[str] = field(default_factory=list)  # "order#sequence" without a row
    out_of_order: list[str] = field(default_factory=list)  # "order#sequence" arrived early
    conflicting: list[str] = field(default_factory=list)  # one (order, sequence), two ids
    unexpected: list[str] = field(default_factory=list)  # no such order or sequence
    last_written_at: float | None = None
    last_arrived_at: float | None = None  # the first arrival of the last event to arrive
    # when each event first arrived, and how long after its change was written
    first_arrival: dict[tuple[str, int], float] = field(default_factory=dict, repr=False)
    lags_s: list[float] = field(default_factory=list, repr=False)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.not_in_outbox

    @property
    def ok(self) -> bool:
        return self.complete and not (self.out_of_order or self.conflicting or self.unexpected)

    @property
    def gap_s(self) -> float | None:
        """From the last change written to PostgreSQL to the last event's arrival."""
        if self.last_written_at is None or self.last_arrived_at is None:
            return None
        return self.last_arrived_at - self.last_written_at

    def delivered_by(self, expected: ExpectedEvents, written_by: float) -> float | None:
        """When the last of the events written by ``written_by`` (Unix seconds) arrived; None
        while one has not."""
        last = None
        for key, at in expected.written_at.items():
            if at <= written_by:
                arrived = self.first_arrival.get(key)
                if arrived is None:
                    return None
                last = arrived if last is None else max(last, arrived)
        return last

    def check(self) -> Check:
        detail = (
            f"{self.arrived:,} of {self.expected:,} events of {self.orders:,} orders, "
            f"{self.repeats:,} repeated"
        )
        for label, found in (
            ("missing", self.missing),
            ("not in the outbox", self.not_in_outbox),
            ("out of order", self.out_of_order),
            ("with two ids", self.conflicting),
            ("unexpected", self.unexpected),
        ):
            if found:
                detail += f"; {len(found):,} {label}, e.g. {', '.join(found[:_EXAMPLES])}"
        if not self.ordered:
            detail += "; delivery order not checked (pulled in commit order)"
        return Check(EVENTS, self.ok, detail)

    def to_json(self) -> dict[str, Any]:
        gap = self.gap_s
        lags = sorted(self.lags_s)

        def lag(q: float) -> float | None:
            return round(lags[min(len(lags) - 1, int(q * len(lags)))], 3) if lags else None

        return {
            "ordered": self.ordered,
            "orders": self.orders,
            "expected": self.expected,
            "arrived": self.arrived,
            "deliveries": self.deliveries,
            "repeats": self.repeats,
            "missing": len(self.missing),
            "not_in_outbox": len(self.not_in_outbox),
            "out_of_order": len(self.out_of_order),
            "conflicting": len(self.conflicting),
            "unexpected": len(self.unexpected),
            "examples": {
                k: v[:_EXAMPLES]
                for k, v in (
                    ("missing", self.missing),
                    ("not_in_outbox", self.not_in_outbox),
                    ("out_of_order", self.out_of_order),
                    ("conflicting", self.conflicting),
                    ("unexpected", self.unexpected),
                )
                if v
            },
            "last_written_at": self.last_written_at,
            "last_arrived_at": self.last_arrived_at,
            "gap_s": None if gap is None else round(gap, 3),
            "lag_p50_s": lag(0.5),
            "lag_p99_s": lag(0.99),
            "lag_max_s": lag(1.0),
        }


def check_events(
    sale_id: str,
    arrivals: Iterable[Arrival],
    expected: ExpectedEvents,
    *,
    ordered: bool = True,
) -> EventFindings:
    """Judge ``arrivals`` (in the order they arrived; other sales' are skipped) against
    ``expected``. With ``ordered``, an order's events must first arrive in sequence order,
    1, 2, 3, ...: the relay sends event k + 1 of an order only once event k was answered."""
    f = EventFindings(ordered=ordered, orders=len(expected.versions), expected=expected.count,
                      last_written_at=expected.last_written_at)  # fmt: skip
    first_id: dict[tuple[str, int], str] = {}
    next_seq: dict[str, int] = {}
    for a in arrivals:
        if a.sale_id != sale_id:
            continue
        f.deliveries += 1
        if a.order_id is None or a.sequence is None:
            f.unexpected.append(f"{a.type} {a.event_id} without an order")
            continue
        key, name = (a.order_id, a.sequence), f"{a.order_id}#{a.sequence}"
        version = expected.versions.get(a.order_id)
        known = expected.ids.get(key)
        if version is None or a.sequence > version:
            f.unexpected.append(name)
            continue
        if key in first_id:
            if a.event_id != first_id[key]:
                f.conflicting.append(name)
            else:
                f.repeats += 1
            continue
        first_id[key] = a.event_id
        f.first_arrival[key] = a.at
        if (written := expected.written_at.get(key)) is not None:
            f.lags_s.append(a.at - written)
        if known is not None and a.event_id != known:
            f.conflicting.append(name)
        f.arrived += 1
        f.last_arrived_at = a.at if f.last_arrived_at is None else max(f.last_arrived_at, a.at)
        want = next_seq.get(a.order_id, 1)
        if ordered and a.sequence != want:
            f.out_of_order.append(name)
        next_seq[a.order_id] = max(want, a.sequence + 1)
    for order_id, version in expected.versions.items():
        for sequence in range(1, version + 1):
            key = (order_id, sequence)
            if key not in expected.ids:
                f.not_in_outbox.append(f"{order_id}#{sequence}")
            if key not in first_id:
                f.missing.append(f"{order_id}#{sequence}")
    return f


def held_units(stats: Mapping[str, Any]) -> int:
    """Paid + reserved units of a sale's stats."""
    return int(stats["paid"]) + int(stats["reserved"])
