"""The outbox: every change of an order becomes one event, in the transaction of the change,
numbered by the order's version, none skipped and none doubled."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg

from flashsale.ids import new_order_id
from flashsale.models import SaleDefinition
from flashsale.outbox import receivers
from flashsale.outbox.events import order_event_id, record_events
from flashsale.payments.store import PaymentRow
from flashsale.settings import ConfirmMode
from flashsale.store import sales
from flashsale.store.orders import OrderRow
from flashsale.store.writer import OrderWriter
from tests.conftest import ServiceFactory
from tests.helpers import Service
from tests.outbox_helpers import EVENT_TEXT

_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _writer(service: Service) -> OrderWriter:
    services = service.services
    return OrderWriter(services.engine.redis, services.pool, services.engine.keys, block_ms=10)


async def _events(pool: asyncpg.Pool, sale_id: str) -> dict[str, list[dict[str, Any]]]:
    """The sale's outbox rows, per order, in id order."""
    rows = await pool.fetch(
        f"SELECT id, event_id, order_id, sequence, type, {EVENT_TEXT} AS payload,"
        " txid::text AS txid FROM outbox WHERE sale_id = $1 ORDER BY id",
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


# The payloads and event ids as flashsale 0.2.0 built them, in SQL (migration 0008 moved the
# building to Python, 0009 the storing to text): receivers and GET /v1/admin/events must get
# the same events, the same ids and the same JSON values.
_ISO_SQL = """to_char((timestamptz 'epoch' + {} * interval '1 millisecond') AT TIME ZONE 'UTC',
                      'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""
_ID_SQL = "'evt_' || left(encode(sha256(convert_to({}, 'UTF8')), 'hex'), 32)"
_ORDER_EVENTS_0_2_0 = f"""
SELECT {_ID_SQL.format("t.o || '#' || t.v")} AS event_id,
       jsonb_build_object(
           'type', 'order.' || t.st,
           'timestamp', {_ISO_SQL.format("t.a")},
           'data', jsonb_build_object(
               'order_id', t.o, 'sale_id', t.s, 'user_id', t.u, 'sequence', t.v,
               'status', t.st, 'quantity', t.q, 'amount_cents', s.price_cents * t.q,
               'currency', s.currency, 'created_at', {_ISO_SQL.format("t.c")},
               'expires_at', {_ISO_SQL.format("t.e")}, 'updated_at', {_ISO_SQL.format("t.a")}
           ) || CASE WHEN t.cp <> '' THEN jsonb_build_object('campaign', t.cp)
                     ELSE '{{}}'::jsonb END
       )::text AS payload
FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::int[],
            $7::bigint[], $8::bigint[], $9::bigint[], $10::text[])
     WITH ORDINALITY AS t(o, s, u, q, st, v, e, c, a, cp, n)
JOIN sales s ON s.sale_id = t.s
ORDER BY t.n
"""
_REFUNDS_0_2_0 = f"""
SELECT CASE WHEN t.v IS NULL THEN {_ID_SQL.format("'payment#' || t.p")}
            ELSE {_ID_SQL.format("t.o || '#' || t.v")} END AS event_id,
       jsonb_build_object(
           'type', 'payment.refund_required',
           'timestamp', {_ISO_SQL.format("t.a")},
           'data', jsonb_build_object(
               'order_id', t.o, 'sale_id', t.s, 'user_id', t.u, 'sequence', t.v,
               'status', t.st, 'quantity', t.q, 'amount_cents', s.price_cents * t.q,
               'currency', s.currency, 'created_at', {_ISO_SQL.format("t.c")},
               'expires_at', {_ISO_SQL.format("t.e")}, 'payment_id', t.p, 'reason', t.r,
               'payment_amount_cents', t.m, 'payment_currency', t.cur
           )
       )::text AS payload
FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::bigint[],
            $7::text[], $8::bigint[], $9::text[], $10::int[], $11::text[], $12::bigint[],
            $13::bigint[])
     WITH ORDINALITY AS t(p, o, s, v, r, m, cur, a, u, q, st, c, e, n)
LEFT JOIN sales s ON s.sale_id = t.s
ORDER BY t.n
"""


async def _euro_sale(pg: asyncpg.Pool, name: str, price_cents: int, now: int) -> str:
    """A sale in PostgreSQL only (record_events reads its price and currency there)."""
    sale_id = f"{name}-{uuid.uuid4().hex[:8]}"
    sale = SaleDefinition(
        sale_id=sale_id, sku=name, name=name, price_cents=price_cents, stock=10,
        per_user_limit=5, starts_ms=now, ends_ms=now + 3_600_000, reservation_ttl_s=60,
        currency="EUR",
    )  # fmt: skip
    await sales.insert_sale(pg, sale)
    return sale_id


async def test_payloads_and_event_ids_are_those_of_0_2_0(
    pg: asyncpg.Pool,
) -> None:
    now = int(time.time() * 1000)
    sale_id = await _euro_sale(pg, "eq", 1999, now)
    odd_user = 'Zoë "the \\ buyer"\t\u2028\U0001f600 </script>'
    orders = [
        OrderRow(new_order_id(sale_id), sale_id, "u1", 1, "reserved", 1, now + 60_000, now, now),
        OrderRow(
            new_order_id(sale_id),
            sale_id,
            odd_user,
            3,
            "paid",
            2,
            now + 60_999,
            now + 7,
            now + 1_001,
            campaign='spring "drop"',
        ),
        OrderRow(new_order_id(sale_id), sale_id, "u3", 1, "expired", 2, 0, 999, 1_000_000_000_001),
    ]
    with_order = orders[1]
    refunds = [
        PaymentRow(
            "pay_1", with_order.order_id, sale_id, 5997, "EUR", "refund_required",
            "order_cancelled", False, "msg_1", now, now + 5, 3,
            order=replace(with_order, status="cancelled", version=3),
        ),
        PaymentRow("pay_2", "o_nowhere", None, 100, "USD", "refund_required", "order_not_found",
                   False, "msg_2", now, now + 6, None),
        PaymentRow("pay_3", new_order_id(sale_id), sale_id, 1, "JPY", "refund_required",
                   "order_not_found", False, "msg_3", now, now + 8, None),
    ]  # fmt: skip
    async with pg.acquire() as conn, conn.transaction():
        await record_events(conn, [*orders, *refunds])
        stored = await conn.fetch(
            f"SELECT event_id, {EVENT_TEXT} AS payload FROM outbox"
            " WHERE order_id = ANY($1::text[]) ORDER BY id",
            [r.order_id for r in orders] + [r.order_id for r in refunds],
        )
        expected = await conn.fetch(
            _ORDER_EVENTS_0_2_0,
            [r.order_id for r in orders], [r.sale_id for r in orders],
            [r.user_id for r in orders], [r.quantity for r in orders],
            [r.status for r in orders], [r.version for r in orders],
            [r.expires_ms for r in orders], [r.created_ms for r in orders],
            [r.updated_ms for r in orders], [r.campaign for r in orders],
        )  # fmt: skip
        expected += await conn.fetch(
            _REFUNDS_0_2_0,
            [r.payment_id for r in refunds], [r.order_id for r in refunds],
            [r.sale_id for r in refunds], [r.order_version for r in refunds],
            [r.reason for r in refunds], [r.amount_cents for r in refunds],
            [r.currency for r in refunds], [r.decided_ms for r in refunds],
            [r.order.user_id if r.order else None for r in refunds],
            [r.order.quantity if r.order else None for r in refunds],
            [r.order.status if r.order else None for r in refunds],
            [r.order.created_ms if r.order else None for r in refunds],
            [r.order.expires_ms if r.order else None for r in refunds],
        )  # fmt: skip
        # recorded again (a replayed batch): nothing more
        await record_events(conn, [*orders, *refunds])
        again = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE order_id = ANY($1::text[])",
            [r.order_id for r in orders] + [r.order_id for r in refunds],
        )
    assert [r["event_id"] for r in stored] == [r["event_id"] for r in expected]
    assert [json.loads(r["payload"]) for r in stored] == [
        json.loads(r["payload"]) for r in expected
    ]
    # the text stored is the text sent: the keys in the documented order, no spaces
    assert stored[0]["payload"].startswith('{"type":"order.reserved","timestamp":"')
    assert list(json.loads(stored[0]["payload"])["data"])[:3] == ["order_id", "sale_id", "user_id"]
    assert len(stored) == again == 6
    assert json.loads(stored[1]["payload"])["data"]["user_id"] == odd_user


async def test_an_order_id_with_a_comma_is_recorded_as_any_other(pg: asyncpg.Pool) -> None:
    """The writer sends an event's short columns as comma-joined texts; a batch with an id
    that holds a comma (never one of the engine's) is sent as arrays, and stored the same."""
    now = int(time.time() * 1000)
    sale_id = await _euro_sale(pg, "comma", 500, now)
    plain, odd = new_order_id(sale_id), f"{sale_id}.odd,id"
    batch = [
        OrderRow(plain, sale_id, "u1", 1, "reserved", 1, now + 60_000, now, now),
        OrderRow(odd, sale_id, "u,2", 2, "paid", 2, now + 60_000, now, now + 1),
    ]
    for rows in (batch[:1], batch):  # the first alone takes the joined texts
        async with pg.acquire() as conn, conn.transaction():
            await record_events(conn, rows)
    stored = await pg.fetch(
        "SELECT event_id, order_id, sale_id, sequence, type, body FROM outbox"
        " WHERE sale_id = $1 ORDER BY id",
        sale_id,
    )
    assert [(r["order_id"], r["sale_id"], r["sequence"], r["type"]) for r in stored] == [
        (plain, sale_id, 1, "order.reserved"), (odd, sale_id, 2, "order.paid"),
    ]  # fmt: skip
    assert [r["event_id"] for r in stored] == [order_event_id(plain, 1), order_event_id(odd, 2)]
    bodies = [json.loads(r["body"])["data"] for r in stored]
    assert [(b["order_id"], b["user_id"], b["amount_cents"]) for b in bodies] == [
        (plain, "u1", 500), (odd, "u,2", 1000),
    ]  # fmt: skip


async def test_redeliver_since_finds_exactly_the_events_since_through_the_brin_index(
    pg: asyncpg.Pool,
) -> None:
    """`flashsale events redeliver --since` reads the outbox by created_at, which migration
    0008 indexes with BRIN: the events recorded at or after the time are queued again, none
    before, and an index (not a scan of the whole table) finds them."""
    url = f"http://127.0.0.1:9/{uuid.uuid4().hex}"
    # a table that grew over a day, a row a minute, in a day of its own (other tests' rows
    # are of today; these are deleted at the end, or their `--since` of today would find them)
    start = datetime(2100, 1, 1, tzinfo=UTC)
    tag = uuid.uuid4().hex[:8]
    ids = await pg.fetch(
        "INSERT INTO outbox (event_id, order_id, sale_id, sequence, type, payload, created_at)"
        " SELECT 'evt_' || $1 || g, 'o_' || $1 || g, NULL, 1, 'order.reserved', '{}',"
        "        $2::timestamptz + g * interval '1 minute'"
        " FROM generate_series(0, 1439) g ORDER BY g RETURNING id, txid::text AS txid",
        tag, start,
    )  # fmt: skip
    try:
        last = max(ids, key=lambda r: (int(r["txid"]), r["id"]))
        # the receiver has taken them all (its cursor is past them)
        await pg.execute(
            "INSERT INTO webhook_receivers (url, cursor_txid, cursor_id)"
            " VALUES ($1, $2::text::xid8, $3)",
            url, last["txid"], last["id"],
        )  # fmt: skip
        since = start + timedelta(hours=23, minutes=30)  # the last 30 minutes: 30 rows
        assert await receivers.redeliver(pg, url, since, enable=False) == 30
        queued = await pg.fetch(
            "SELECT o.order_id FROM outbox_deliveries d JOIN outbox o ON o.id = d.outbox_id"
            " WHERE d.receiver = $1 ORDER BY o.id",
            url,
        )
        assert [r["order_id"] for r in queued] == [f"o_{tag}{g}" for g in range(1410, 1440)]
        assert await receivers.redeliver(pg, url, start + timedelta(days=1), enable=False) == 0

        async with pg.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            plan = await conn.fetchval(
                "EXPLAIN (FORMAT JSON) SELECT id FROM outbox WHERE created_at >= $1", since
            )
        assert "outbox_created_at_brin" in plan
    finally:
        # the worker's database is shared by the tests that follow: `events status` there
        # reports every receiver, and `--since` today would find these rows of 2100
        await pg.execute("DELETE FROM webhook_receivers WHERE url = $1", url)
        await pg.execute("DELETE FROM outbox WHERE event_id LIKE 'evt_' || $1 || '%'", tag)
