"""The outbox: every change of an order becomes one event, in the transaction of the change,
numbered by the order's version, none skipped and none doubled."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, cast

import asyncpg

from flashsale.ids import new_order_id
from flashsale.settings import ConfirmMode
from flashsale.store.writer import OrderWriter
from tests.conftest import ServiceFactory
from tests.helpers import Service

_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _writer(service: Service) -> OrderWriter:
    services = service.services
    return OrderWriter(services.engine.redis, services.pool, services.engine.keys, block_ms=10)


async def _events(pool: asyncpg.Pool, sale_id: str) -> dict[str, list[dict[str, Any]]]:
    """The sale's outbox rows, per order, in id order."""
    rows = await pool.fetch(
        "SELECT id, event_id, order_id, sequence, type, payload::text AS payload, txid::text"
        " AS txid FROM outbox WHERE sale_id = $1 ORDER BY id",
        sale_id,
    )
    per_order: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        per_order.setdefault(r["order_id"], []).append(
            {**dict(r), "payload": json.loads(r["payload"])}
        )
    return per_order


async def _order_status(service: Service, order_id: str, user: str) -> str:
    reply = await service.call("GET", f"/v1/orders/{order_id}", headers=service.auth(user))
    status: str = reply.body["order"]["status"]
    return status


async def test_a_sales_life_in_events_in_order_none_skipped_none_doubled(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(run_writer=False)
    sale = await service.create_sale(stock=10, price_cents=1250, reservation_ttl_s=1,
                                     per_user_limit=2)  # fmt: skip
    sid = sale["sale_id"]
    redis = service.services.engine.redis
    stream = service.services.engine.keys.sale(sid).events

    paid = (await service.buy(sid, "u1", {"quantity": 2})).body["order"]["order_id"]
    # reserved and paid in one writer batch
    assert (await service.pay(paid)).body["payment"]["outcome"] == "paid"
    cancelled = (await service.buy(sid, "u2")).body["order"]["order_id"]
    assert await _writer(service).drain() == 4  # 2 buys, the paid order and its payment
    assert (await service.order_action(cancelled, "u2", "cancel")).status == 200
    refused = await service.pay(cancelled)  # a payment for a cancelled order: give it back
    assert refused.body["payment"]["outcome"] == "refund_required", refused.body
    expired = (await service.buy(sid, "u3")).body["order"]["order_id"]
    deadline = time.monotonic() + 5
    while await _order_status(service, expired, "u3") != "expired":  # the sweeper's doing
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    entries = cast(list[tuple[str, dict[str, str]]], await redis.xrange(stream))
    await _writer(service).drain()

    events = await _events(service.services.pool, sid)
    assert {
        order_id: [(e["sequence"], e["type"]) for e in rows] for order_id, rows in events.items()
    } == {
        paid: [(1, "order.reserved"), (2, "order.paid")],
        cancelled: [(1, "order.reserved"), (2, "order.cancelled"),
                    (3, "payment.refund_required")],
        expired: [(1, "order.reserved"), (2, "order.expired")],
    }  # fmt: skip
    # the order reserved and paid in one batch: both events, in that batch's transaction,
    # which is the transaction that wrote its row
    row_xmin = await service.services.pool.fetchval(
        "SELECT xmin::text FROM orders WHERE order_id = $1", paid
    )
    assert {int(e["txid"]) % 2**32 for e in events[paid]} == {int(row_xmin)}

    for rows in events.values():
        for e in rows:
            payload = e["payload"]
            assert set(payload) == {"type", "timestamp", "data"}
            assert payload["type"] == e["type"]
            assert _ISO.fullmatch(payload["timestamp"])
            assert re.fullmatch(r"evt_[0-9a-f]{32}", e["event_id"])
            data = payload["data"]
            assert data["order_id"] == e["order_id"]
            assert data["sale_id"] == sid
            assert data["sequence"] == e["sequence"]
            assert data["amount_cents"] == 1250 * data["quantity"]
            assert data["currency"] == "USD"
            assert _ISO.fullmatch(data["created_at"])
            assert _ISO.fullmatch(data["expires_at"])
    paid_data = events[paid][1]["payload"]["data"]
    assert (paid_data["status"], paid_data["quantity"], paid_data["amount_cents"]) == (
        "paid", 2, 2500,
    )  # fmt: skip
    refund = events[cancelled][2]["payload"]["data"]
    assert refund["status"] == "cancelled"
    assert refund["user_id"] == "u2"
    assert refund["reason"] == "order_cancelled"
    assert refund["payment_id"] == refused.body["payment"]["payment_id"]
    assert (refund["payment_amount_cents"], refund["payment_currency"]) == (1250, "USD")

    # a replayed batch (a writer that died after its commit) inserts nothing twice
    for _, fields in entries:
        await redis.xadd(stream, fields)  # type: ignore[arg-type]
    assert await _writer(service).drain() == len(entries)
    assert await _events(service.services.pool, sid) == events


async def test_an_event_refused_for_good_leaves_neither_its_order_nor_its_event(
    make_service: ServiceFactory,
) -> None:
    """The dead-letter fallback writes the events of a batch one by one, each in a transaction
    of its own: the one PostgreSQL refuses (here its outbox row, sequence 0) leaves no order
    row behind either, and the good ones arrive with their events."""
    service = await make_service(run_writer=False)
    sid = (await service.create_sale())["sale_id"]
    good = (await service.buy(sid, "u1")).body["order"]["order_id"]
    bad = new_order_id(sid)
    now = str(int(time.time() * 1000))
    await service.services.engine.redis.xadd(
        service.services.engine.keys.sale(sid).events,
        {"order_id": bad, "user": "u2", "qty": "1", "status": "reserved", "v": "0",
         "created_ms": now, "updated_ms": now, "expires_ms": now, "fcode": "", "campaign": ""},
    )  # fmt: skip
    writer = _writer(service)
    await writer.drain()
    assert writer.dead_lettered == 1
    pool = service.services.pool
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE order_id = $1", bad) == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE order_id = $1", bad) == 0
    assert [e["type"] for e in (await _events(pool, sid))[good]] == ["order.reserved"]


async def test_confirm_mode_postgres_commits_the_event_with_the_order(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(confirm_mode=ConfirmMode.POSTGRES, run_writer=False)
    sid = (await service.create_sale(stock=5))["sale_id"]
    replies = await asyncio.gather(*(service.buy(sid, f"u{i}") for i in range(5)))
    orders = {r.body["order"]["order_id"] for r in replies}
    assert all(r.status == 201 for r in replies)
    # no writer runs: each 201 came after a commit of the order row and its event together
    rows = await service.services.pool.fetch(
        "SELECT e.order_id, e.sequence, e.type, e.txid::text AS txid, o.xmin::text AS xmin"
        " FROM outbox e JOIN orders o USING (order_id) WHERE e.sale_id = $1",
        sid,
    )
    assert {r["order_id"] for r in rows} == orders
    assert {(r["sequence"], r["type"]) for r in rows} == {(1, "order.reserved")}
    assert all(int(r["txid"]) % 2**32 == int(r["xmin"]) for r in rows)
    # a payment answered in this mode is committed with its order's row, and its event
    paid = sorted(orders)[0]
    assert (await service.pay(paid)).body["payment"]["outcome"] == "paid"
    row = await service.services.pool.fetchrow(
        "SELECT e.type, e.txid::text AS txid, o.xmin::text AS xmin FROM outbox e"
        " JOIN orders o USING (order_id) WHERE e.order_id = $1 AND e.sequence = 2",
        paid,
    )
    assert row is not None
    assert row["type"] == "order.paid"
    assert int(row["txid"]) % 2**32 == int(row["xmin"])
    # the writer carrying the same orders later adds nothing
    before = await _events(service.services.pool, sid)
    await _writer(service).drain()
    assert await _events(service.services.pool, sid) == before
