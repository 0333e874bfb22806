"""Payments in PostgreSQL: the ``payments`` table (migration 0005).

Every payment reaches the table the way orders do: the payment event pay.lua adds to the
sale's events stream is written by the order writer (``PaymentRow.from_event`` and
``insert_payments``), and in confirm mode "postgres" by the group commit before the answer.
A payment event also carries its order as the payment left it, at the version the payment
produced, and that is upserted with it: so the order's row keeps up with every version, in
whatever order the events are written. A payment is stored once: the payment service's
``payment_id`` is the key, and a payment written again changes nothing.

A payment for an order id that names no sale of ours has no stream to travel by: it is
recorded here directly (``record_without_sale``), before it is answered.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from flashsale.models import datetime_to_ms, iso, ms_to_datetime
from flashsale.payments.notifications import Notification
from flashsale.store.orders import OrderRow, upsert_orders

PAID = "paid"
REFUND_REQUIRED = "refund_required"


@dataclass(frozen=True, slots=True)
class PaymentRow:
    """One payment and the outcome decided for it."""

    payment_id: str
    order_id: str
    sale_id: str | None  # None: the order id names no sale of ours
    amount_cents: int
    currency: str
    outcome: str  # PAID or REFUND_REQUIRED
    reason: str | None  # why a refund is required; None when paid
    late: bool  # paid after the reservation had expired
    webhook_id: str  # of the notification that brought it first
    received_ms: int
    decided_ms: int
    order_version: int | None  # the order's version this payment produced
    order: OrderRow | None = None  # the order as the payment left it (or newer)

    @classmethod
    def from_event(cls, sale_id: str, fields: Mapping[str, str]) -> PaymentRow:
        """The payment of a ``kind=payment`` event of ``sale_id``'s stream."""
        order = None
        if "order_user" in fields:  # the order as the payment left it
            order = OrderRow(
                order_id=fields["order_id"], sale_id=sale_id, user_id=fields["order_user"],
                quantity=int(fields["order_qty"]), status=fields["order_status"],
                version=int(fields["order_v"]), expires_ms=int(fields["order_expires_ms"]),
                created_ms=int(fields["order_created_ms"]),
                updated_ms=int(fields["order_updated_ms"]), fcode=fields["order_fcode"],
                campaign=fields["order_campaign"],
            )  # fmt: skip
        return cls(
            payment_id=fields["payment_id"], order_id=fields["order_id"], sale_id=sale_id,
            amount_cents=int(fields["amount_cents"]), currency=fields["currency"],
            outcome=fields["outcome"], reason=fields["reason"] or None,
            late=fields["late"] == "1", webhook_id=fields["webhook_id"],
            received_ms=int(fields["received_ms"]), decided_ms=int(fields["decided_ms"]),
            order_version=None if order is None else order.version, order=order,
        )  # fmt: skip

    @classmethod
    def from_record(cls, sale_id: str, record: str | bytes) -> PaymentRow:
        """The payment from the record pay.lua keeps of it (JSON, numbers as strings)."""
        r: dict[str, Any] = json.loads(record)
        return cls(
            payment_id=r["payment_id"], order_id=r["order_id"], sale_id=sale_id,
            amount_cents=int(r["amount_cents"]), currency=r["currency"], outcome=r["outcome"],
            reason=r["reason"] or None, late=bool(r["late"]), webhook_id=r["webhook_id"],
            received_ms=int(r["received_ms"]), decided_ms=int(r["decided_ms"]),
            order_version=int(r["order_version"]) if r["order_version"] else None,
        )  # fmt: skip

    def answer_json(self) -> dict[str, Any]:
        """What the payment service is told: the same every time this payment is sent."""
        return {
            "payment_id": self.payment_id,
            "order_id": self.order_id,
            "outcome": self.outcome,
            "reason": self.reason,
            "late": self.late,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "received_at": iso(self.received_ms),
            "decided_at": iso(self.decided_ms),
        }


_COLUMNS = (
    "payment_id, order_id, sale_id, amount_cents, currency, outcome, reason, late, webhook_id,"
    " order_version, received_at, decided_at"
)

_INSERT = f"""
INSERT INTO payments ({_COLUMNS})
SELECT p, o, s, a, c, oc, r, l, w, v, to_timestamp(rc / 1000.0), to_timestamp(d / 1000.0)
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
            $7::text[], $8::bool[], $9::text[], $10::int[], $11::bigint[], $12::bigint[])
     AS t(p, o, s, a, c, oc, r, l, w, v, rc, d)
ON CONFLICT (payment_id) DO NOTHING
"""


async def insert_payments(
    conn: asyncpg.Connection | asyncpg.Pool, rows: Iterable[PaymentRow]
) -> None:
    """Store payments (a payment already stored stays as it is) and upsert the orders they
    carry (versioned, as every order row). Idempotent and order-independent."""
    batch = list(rows)
    if not batch:
        return
    await upsert_orders(conn, [r.order for r in batch if r.order is not None])
    await conn.execute(
        _INSERT,
        [r.payment_id for r in batch], [r.order_id for r in batch], [r.sale_id for r in batch],
        [r.amount_cents for r in batch], [r.currency for r in batch],
        [r.outcome for r in batch], [r.reason for r in batch], [r.late for r in batch],
        [r.webhook_id for r in batch], [r.order_version for r in batch],
        [r.received_ms for r in batch], [r.decided_ms for r in batch],
    )  # fmt: skip


_SELECT = f"SELECT {_COLUMNS} FROM payments"


async def record_without_sale(
    pool: asyncpg.Pool, notice: Notification, received_ms: int
) -> PaymentRow:
    """Decide and store a payment for an order id that names no sale of ours (none armed):
    refund_required, order_not_found. A notification or payment seen before gets its first
    answer. Committed when this returns, with its ``payment.refund_required`` event (in the
    same transaction, as every event is), so the shop hears of the refund it owes."""
    from flashsale.outbox.events import record_events  # the outbox reads this module's rows

    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"{_SELECT} WHERE webhook_id = $1 ORDER BY decided_at LIMIT 1", notice.webhook_id
        )
        if row is None:
            await conn.execute(
                f"INSERT INTO payments ({_COLUMNS}) VALUES ($1, $2, NULL, $3, $4, $5,"
                " 'order_not_found', false, $6, NULL, $7, clock_timestamp())"
                " ON CONFLICT (payment_id) DO NOTHING",
                notice.payment_id, notice.order_id, notice.amount_cents, notice.currency,
                REFUND_REQUIRED, notice.webhook_id, ms_to_datetime(received_ms),
            )  # fmt: skip
            row = await conn.fetchrow(f"{_SELECT} WHERE payment_id = $1", notice.payment_id)
            assert row is not None  # inserted now, or there before under another webhook-id
            await record_events(conn, [_from_row(row)])  # a repeat inserts nothing
    assert row is not None
    return _from_row(row)


def _from_row(row: asyncpg.Record) -> PaymentRow:
    return PaymentRow(
        payment_id=row["payment_id"], order_id=row["order_id"], sale_id=row["sale_id"],
        amount_cents=row["amount_cents"], currency=row["currency"], outcome=row["outcome"],
        reason=row["reason"], late=row["late"], webhook_id=row["webhook_id"],
        received_ms=datetime_to_ms(row["received_at"]),
        decided_ms=datetime_to_ms(row["decided_at"]),
        order_version=row["order_version"],
    )  # fmt: skip
