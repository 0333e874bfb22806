"""Recording order events: one outbox row per change of an order, in the change's transaction.

Every path that stores an order change (the order writer's batch, the group commit of confirm
mode "postgres") calls ``record_events`` with its connection inside the transaction that
stores the change, so the event exists exactly when the change does. An event is keyed by the
order and the order's version after the change (its ``sequence``), with ``ON CONFLICT DO
NOTHING``: a replayed batch, or the writer carrying an order the group commit stored already,
inserts nothing twice.

The payload is built here, in SQL, once, in the Standard Webhooks shape ``{"type",
"timestamp", "data"}``; the relay and the pull API only move it. ``amount_cents`` is the sale's
price times the quantity, in the sale's ``currency``. A ``payment.refund_required`` event also
has the ``payment_id``, the ``reason`` and what was paid (``payment_amount_cents``,
``payment_currency``); the payment decision bumped the order's version, which is its
sequence.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from flashsale.payments.store import REFUND_REQUIRED as REFUND_REQUIRED_OUTCOME
from flashsale.payments.store import PaymentRow
from flashsale.store.orders import OrderRow

# the types: "order." + the order's status after the change, and this one
REFUND_REQUIRED = "payment.refund_required"

# An event's id, the webhook-id of each of its deliveries: the same for (order, sequence)
# whoever records it and however often.
_EVENT_ID = "'evt_' || left(encode(sha256(convert_to({key}, 'UTF8')), 'hex'), 32)"
_ORDER_EVENT_ID = _EVENT_ID.format(key="t.o || '#' || t.v")


def _iso(ms: str) -> str:
    """SQL for the ISO 8601 text (UTC, milliseconds) of a Unix time in ms, as the API writes."""
    at = f"(timestamptz 'epoch' + {ms} * interval '1 millisecond') AT TIME ZONE 'UTC'"
    return f"""to_char({at}, 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""


_RECORD_ORDER_EVENTS = f"""
INSERT INTO outbox (event_id, order_id, sale_id, sequence, type, payload)
SELECT {_ORDER_EVENT_ID}, t.o, t.s, t.v, 'order.' || t.st,
       jsonb_build_object(
           'type', 'order.' || t.st,
           'timestamp', {_iso("t.a")},
           'data', jsonb_build_object(
               'order_id', t.o, 'sale_id', t.s, 'user_id', t.u, 'sequence', t.v,
               'status', t.st, 'quantity', t.q, 'amount_cents', s.price_cents * t.q,
               'currency', s.currency, 'created_at', {_iso("t.c")},
               'expires_at', {_iso("t.e")}, 'updated_at', {_iso("t.a")}
           ) || CASE WHEN t.cp <> '' THEN jsonb_build_object('campaign', t.cp)
                     ELSE '{{}}'::jsonb END
       )
FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::int[],
            $7::bigint[], $8::bigint[], $9::bigint[], $10::text[])
     WITH ORDINALITY AS t(o, s, u, q, st, v, e, c, a, cp, n)
JOIN sales s ON s.sale_id = t.s
ORDER BY t.n
ON CONFLICT DO NOTHING
"""


def order_events(rows: Iterable[OrderRow]) -> list[OrderRow]:
    """Every change of the batch, in the batch's order, each (order, version) once: not only
    each order's newest state, so an order reserved and paid in one batch has both events."""
    seen: set[tuple[str, int]] = set()
    events = []
    for row in rows:
        key = (row.order_id, row.version)
        if key not in seen:
            seen.add(key)
            events.append(row)
    return events


async def record_order_events(conn: asyncpg.Connection, rows: Iterable[OrderRow]) -> None:
    """One ``order.<status>`` event per order change in ``rows``; call it in the transaction
    that stores them."""
    events = order_events(rows)
    if not events:
        return
    await conn.execute(
        _RECORD_ORDER_EVENTS,
        [r.order_id for r in events], [r.sale_id for r in events], [r.user_id for r in events],
        [r.quantity for r in events], [r.status for r in events], [r.version for r in events],
        [r.expires_ms for r in events], [r.created_ms for r in events],
        [r.updated_ms for r in events], [r.campaign for r in events],
    )  # fmt: skip


# The order's fields come from the order as the payment left it (its event carries it); a
# payment naming no order of ours has them null, no sequence, and is keyed by its payment id.
_RECORD_REFUNDS = f"""
INSERT INTO outbox (event_id, order_id, sale_id, sequence, type, payload)
SELECT CASE WHEN t.v IS NULL THEN {_EVENT_ID.format(key="'payment#' || t.p")}
            ELSE {_ORDER_EVENT_ID} END,
       t.o, t.s, t.v, '{REFUND_REQUIRED}',
       jsonb_build_object(
           'type', '{REFUND_REQUIRED}',
           'timestamp', {_iso("t.a")},
           'data', jsonb_build_object(
               'order_id', t.o, 'sale_id', t.s, 'user_id', t.u, 'sequence', t.v,
               'status', t.st, 'quantity', t.q, 'amount_cents', s.price_cents * t.q,
               'currency', s.currency, 'created_at', {_iso("t.c")},
               'expires_at', {_iso("t.e")}, 'payment_id', t.p, 'reason', t.r,
               'payment_amount_cents', t.m, 'payment_currency', t.cur
           )
       )
FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::bigint[],
            $7::text[], $8::bigint[], $9::text[], $10::int[], $11::text[], $12::bigint[],
            $13::bigint[])
     WITH ORDINALITY AS t(p, o, s, v, r, m, cur, a, u, q, st, c, e, n)
LEFT JOIN sales s ON s.sale_id = t.s
ORDER BY t.n
ON CONFLICT DO NOTHING
"""


def _exact(row: PaymentRow) -> bool:
    """Whether the payment comes with its order as the payment left it (its event's, or read
    from Redis before anything else happened to it), or names no order of ours at all. A
    payment whose order has moved on since waits for the order writer, which carries each
    version from the stream and records the event in the transaction that stores it."""
    if row.order is None:
        return row.order_version is None and row.outcome == REFUND_REQUIRED_OUTCOME
    return row.order.version == row.order_version


def refunds_required(rows: Iterable[object]) -> list[PaymentRow]:
    """The payments of ``rows`` to be given back that can be told now (see ``_exact``)."""
    return [
        r
        for r in rows
        if isinstance(r, PaymentRow) and r.outcome == REFUND_REQUIRED_OUTCOME and _exact(r)
    ]


def changed_orders(rows: Iterable[object]) -> list[OrderRow]:
    """The order changes of ``rows``: order events, and the orders paid payments left. The
    latter is the same change as the order's event (the same key), but that event may come
    later: in confirm mode "postgres" the group commit stores the payment, and the order as
    it left it, before the writer sees either."""
    changed = []
    for r in rows:
        if isinstance(r, OrderRow):
            changed.append(r)
        elif (
            isinstance(r, PaymentRow)
            and r.outcome != REFUND_REQUIRED_OUTCOME
            and r.order is not None
            and _exact(r)
        ):
            changed.append(r.order)
    return changed


async def record_refunds_required(conn: asyncpg.Connection, rows: Iterable[object]) -> None:
    """One ``payment.refund_required`` event per payment of ``rows`` to be given back."""
    batch = refunds_required(rows)
    if not batch:
        return
    orders = [r.order for r in batch]
    await conn.execute(
        _RECORD_REFUNDS,
        [r.payment_id for r in batch], [r.order_id for r in batch], [r.sale_id for r in batch],
        [r.order_version for r in batch], [r.reason for r in batch],
        [r.amount_cents for r in batch], [r.currency for r in batch],
        [r.decided_ms for r in batch],
        [o.user_id if o else None for o in orders], [o.quantity if o else None for o in orders],
        [o.status if o else None for o in orders], [o.created_ms if o else None for o in orders],
        [o.expires_ms if o else None for o in orders],
    )  # fmt: skip


async def record_events(conn: asyncpg.Connection, rows: Iterable[object]) -> None:
    """The outbox rows of a batch of stored changes (order events, payments; anything else
    changes no order): call it in the transaction that stores them."""
    batch = list(rows)
    await record_order_events(conn, changed_orders(batch))
    await record_refunds_required(conn, batch)
