"""Recording order events: one outbox row per change of an order, in the change's transaction.

Every path that stores an order change (the order writer's batch, the group commit of confirm
mode "postgres") calls ``record_events`` with its connection inside the transaction that
stores the change, so the event exists exactly when the change does. An event is keyed by the
order and the order's version after the change (its ``sequence``), with ``ON CONFLICT DO
NOTHING``: a replayed batch, or the writer carrying an order the group commit stored already,
inserts nothing twice.

The payload is built here, once, in the Standard Webhooks shape ``{"type", "timestamp",
"data"}``; the relay and the pull API only move it. ``amount_cents`` is the sale's price times
the quantity, in the sale's ``currency``, as the ``sales`` row has them in the transaction
(``sale_prices``: a sale's price may be edited). A ``payment.refund_required`` event also has
the ``payment_id``, the ``reason`` and what was paid (``payment_amount_cents``,
``payment_currency``); the payment decision bumped the order's version, which is its sequence.

The payload and the event id are made in Python (orjson, hashlib) rather than in SQL: each
order change pays for them on the buy path's box, and PostgreSQL's ``jsonb_build_object``,
``to_char`` and ``sha256`` cost several times what the same work costs here. The payload is
stored as text in ``body`` (migration 0009): the bytes made here are the bytes the relay signs
and sends and the pull API returns, and PostgreSQL does not parse them. Rows written before
0009 hold a jsonb ``payload`` instead; readers take the one there is (``STORED_TEXT``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import asyncpg
import orjson

from flashsale.models import iso
from flashsale.payments.store import REFUND_REQUIRED as REFUND_REQUIRED_OUTCOME
from flashsale.payments.store import PaymentRow
from flashsale.store.orders import OrderRow

# the types: "order." + the order's status after the change, and this one
REFUND_REQUIRED = "payment.refund_required"

# An event's text as stored: in "body" since migration 0009, in the jsonb "payload" before.
STORED_TEXT = "coalesce({0}body, {0}payload::text)"

SalePrices = dict[str, tuple[int, str]]  # sale id -> (price_cents, currency)


def event_id(key: str) -> str:
    """An event's id, the webhook-id of each of its deliveries: the same for its key (order
    and sequence, or a payment naming no order) whoever records it and however often."""
    return "evt_" + hashlib.sha256(key.encode()).digest()[:16].hex()


# The ISO text of each second seen lately, and ".000Z" to ".999Z": an order change writes
# three times, most in the same few seconds, so each is mostly two look-ups.
_SECOND_TEXTS: dict[int, str] = {}
_SECOND_TEXTS_MAX = 4096
_MILLI_TEXTS = [f".{milli:03d}Z" for milli in range(1000)]


def _iso(ms: int) -> str:
    """``flashsale.models.iso``, the same text, cheaper."""
    second, milli = divmod(ms, 1000)
    text = _SECOND_TEXTS.get(second)
    if text is None:
        if len(_SECOND_TEXTS) >= _SECOND_TEXTS_MAX:
            _SECOND_TEXTS.clear()
        text = _SECOND_TEXTS[second] = iso(second * 1000)[:-5]
    return text + _MILLI_TEXTS[milli]


def order_event_id(order_id: str, sequence: int) -> str:
    return event_id(f"{order_id}#{sequence}")


async def sale_prices(conn: asyncpg.Connection, sale_ids: set[str]) -> SalePrices:
    """The price and currency of each sale named, as this transaction sees them."""
    rows = await conn.fetch(
        "SELECT sale_id, price_cents, currency FROM sales WHERE sale_id = ANY($1::text[])",
        list(sale_ids),
    )
    return {r["sale_id"]: (r["price_cents"], r["currency"]) for r in rows}


# In the arrays' order (the ids the pull cursor and the relay go by follow it). The arbiter is
# (order_id, sequence): an order's event is that pair, and its event_id is made from it.
_INSERT_ORDER_EVENTS = """
INSERT INTO outbox (event_id, order_id, sale_id, sequence, type, body)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[])
ON CONFLICT (order_id, sequence) DO NOTHING
"""
# The same with the short columns sent as comma-joined texts, split by PostgreSQL: asyncpg
# checks each element of a text array against three abstract base classes as it encodes it,
# which cost the writer more than PostgreSQL spends splitting them. Only for ids without a
# comma (the engine's never hold one; anything else takes the arrays above).
_INSERT_ORDER_EVENTS_JOINED = """
INSERT INTO outbox (event_id, order_id, sale_id, sequence, type, body)
SELECT * FROM unnest(string_to_array($1, ','), string_to_array($2, ','),
                     string_to_array($3, ','), string_to_array($4, ',')::int[],
                     string_to_array($5, ','), $6::text[])
ON CONFLICT (order_id, sequence) DO NOTHING
"""


def _order_payload(row: OrderRow, price_cents: int, currency: str) -> str:
    """The event's JSON text, as receivers get it."""
    updated = _iso(row.updated_ms)
    data: dict[str, Any] = {
        "order_id": row.order_id, "sale_id": row.sale_id, "user_id": row.user_id,
        "sequence": row.version, "status": row.status, "quantity": row.quantity,
        "amount_cents": price_cents * row.quantity, "currency": currency,
        "created_at": _iso(row.created_ms), "expires_at": _iso(row.expires_ms),
        "updated_at": updated,
    }  # fmt: skip
    if row.campaign:
        data["campaign"] = row.campaign
    return orjson.dumps(
        {"type": "order." + row.status, "timestamp": updated, "data": data}
    ).decode()


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


async def _insert_order_events(
    conn: asyncpg.Connection, events: list[OrderRow], prices: SalePrices
) -> None:
    """One ``order.<status>`` event per order change (none for an order of a sale PostgreSQL
    does not have)."""
    known = [(r, price) for r in events if (price := prices.get(r.sale_id)) is not None]
    if not known:
        return
    ids = [order_event_id(r.order_id, r.version) for r, _ in known]
    orders = [r.order_id for r, _ in known]
    sales = [r.sale_id for r, _ in known]
    versions = [r.version for r, _ in known]
    types = ["order." + r.status for r, _ in known]
    bodies = [_order_payload(r, *price) for r, price in known]
    # an event id, a number or a type never holds a comma; an order or sale id may not either
    commas = len(known) - 1
    joined_orders, joined_sales = ",".join(orders), ",".join(sales)
    if joined_orders.count(",") == commas == joined_sales.count(",") and all(orders):
        await conn.execute(
            _INSERT_ORDER_EVENTS_JOINED, ",".join(ids), joined_orders, joined_sales,
            ",".join(map(str, versions)), ",".join(types), bodies,
        )  # fmt: skip
    else:
        await conn.execute(_INSERT_ORDER_EVENTS, ids, orders, sales, versions, types, bodies)


# The order's fields come from the order as the payment left it (its event carries it); a
# payment naming no order of ours has them null, no sequence, and is keyed by its payment id.
# Its conflict may be on either unique index (see migration 0008), so none is named.
_INSERT_REFUNDS = """
INSERT INTO outbox (event_id, order_id, sale_id, sequence, type, body)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[])
ON CONFLICT DO NOTHING
"""


def _refund_payload(row: PaymentRow, price: tuple[int, str] | None) -> str:
    o = row.order
    data = {
        "order_id": row.order_id, "sale_id": row.sale_id,
        "user_id": o.user_id if o else None, "sequence": row.order_version,
        "status": o.status if o else None, "quantity": o.quantity if o else None,
        "amount_cents": price[0] * o.quantity if o and price else None,
        "currency": price[1] if price else None,
        "created_at": _iso(o.created_ms) if o else None,
        "expires_at": _iso(o.expires_ms) if o else None, "payment_id": row.payment_id,
        "reason": row.reason, "payment_amount_cents": row.amount_cents,
        "payment_currency": row.currency,
    }  # fmt: skip
    body = {"type": REFUND_REQUIRED, "timestamp": _iso(row.decided_ms), "data": data}
    return orjson.dumps(body).decode()


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


async def _insert_refunds(
    conn: asyncpg.Connection, batch: list[PaymentRow], prices: SalePrices
) -> None:
    """One ``payment.refund_required`` event per payment to be given back."""
    await conn.execute(
        _INSERT_REFUNDS,
        [
            event_id(f"payment#{r.payment_id}")
            if r.order_version is None
            else order_event_id(r.order_id, r.order_version)
            for r in batch
        ],
        [r.order_id for r in batch], [r.sale_id for r in batch],
        [r.order_version for r in batch], [REFUND_REQUIRED] * len(batch),
        [_refund_payload(r, prices.get(r.sale_id) if r.sale_id else None) for r in batch],
    )  # fmt: skip


async def record_events(conn: asyncpg.Connection, rows: Iterable[object]) -> None:
    """The outbox rows of a batch of stored changes (order events, payments; anything else
    changes no order): call it in the transaction that stores them."""
    batch = list(rows)
    orders = order_events(changed_orders(batch))
    refunds = refunds_required(batch)
    if not orders and not refunds:
        return
    sale_ids = {r.sale_id for r in orders} | {r.sale_id for r in refunds if r.sale_id}
    prices = await sale_prices(conn, sale_ids)
    if orders:
        await _insert_order_events(conn, orders, prices)
    if refunds:
        await _insert_refunds(conn, refunds, prices)
