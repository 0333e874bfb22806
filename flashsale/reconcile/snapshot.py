"""What Redis and PostgreSQL hold about one sale, read for comparison.

Redis is read key by key (SCAN over the order hashes), so on a live sale the totals may move
while they are read: the sale hash is read before and after, and ``settled`` says whether it
stayed the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import asyncpg
from redis.asyncio import Redis

from flashsale.engine.keys import SaleKeys
from flashsale.store import dead_letters
from flashsale.store.dead_letters import DeadLetter
from flashsale.store.orders import OrderRow

_ORDER_FIELDS = ("user", "qty", "status", "v", "created_ms", "updated_ms", "expires_ms",
                 "fcode", "campaign")  # fmt: skip
_COUNTERS = ("stock", "fcode_stock", "available", "fcode_available", "reserved", "paid",
             "per_user_limit", "bookings", "fc_lane", "fcode_released")  # fmt: skip


@dataclass
class RedisSide:
    sale: dict[str, str]  # the sale hash (empty: not in Redis)
    settled: bool  # the sale hash did not change while everything else was read
    orders: dict[str, OrderRow] = field(default_factory=dict)
    holders: dict[str, int] = field(default_factory=dict)
    deadlines: dict[str, int] = field(default_factory=dict)  # order id -> expiry ms
    fcodes: dict[str, str] = field(default_factory=dict)  # digest -> state|campaign|order|user
    events_pending: int = 0  # order and booking events not yet written to PostgreSQL
    dead_letters: list[DeadLetter] = field(default_factory=list)  # events PostgreSQL refused

    def counter(self, name: str) -> int:
        return int(self.sale.get(name) or 0)


@dataclass
class PostgresSide:
    sale: asyncpg.Record | None
    orders: dict[str, OrderRow] = field(default_factory=dict)
    fcodes: dict[str, asyncpg.Record] = field(default_factory=dict)
    bookings: int = 0


async def _hash(redis: Redis, key: str) -> dict[str, str]:
    return cast(dict[str, str], await redis.hgetall(key))


async def read_redis(redis: Redis, keys: SaleKeys, sale_id: str) -> RedisSide:
    before = await _hash(redis, keys.sale)
    side = RedisSide(sale=before, settled=True)
    if not before:
        return side
    order_keys = [key async for key in redis.scan_iter(match=keys.order("*"), count=1000)]
    for start in range(0, len(order_keys), 500):
        chunk = order_keys[start : start + 500]
        async with redis.pipeline(transaction=False) as pipe:
            for key in chunk:
                pipe.hmget(key, _ORDER_FIELDS)  # type: ignore[unused-awaitable]
            values = await pipe.execute()
        for key, row in zip(chunk, values, strict=True):
            if row[0] is None:
                continue  # deleted between SCAN and HMGET
            order_id = key.rsplit(":order:", 1)[1]
            side.orders[order_id] = OrderRow(
                order_id=order_id, sale_id=sale_id, user_id=row[0], quantity=int(row[1]),
                status=row[2], version=int(row[3]), created_ms=int(row[4]),
                updated_ms=int(row[5]), expires_ms=int(row[6]), fcode=row[7] or "",
                campaign=row[8] or "",
            )  # fmt: skip
    side.holders = {u: int(n) for u, n in (await _hash(redis, keys.holders)).items()}
    deadlines = cast(
        list[tuple[str, float]], await redis.zrange(keys.deadlines, 0, -1, withscores=True)
    )
    side.deadlines = {member: int(score) for member, score in deadlines}
    side.fcodes = await _hash(redis, keys.fcodes)
    side.events_pending = int(await redis.xlen(keys.events))
    side.dead_letters = await dead_letters.read(redis, keys)
    after = await _hash(redis, keys.sale)
    side.settled = all(before.get(name) == after.get(name) for name in _COUNTERS)
    side.sale = after
    return side


async def read_postgres(conn: asyncpg.Connection, sale_id: str) -> PostgresSide:
    sale = await conn.fetchrow("SELECT * FROM sales WHERE sale_id = $1", sale_id)
    side = PostgresSide(sale=sale)
    if sale is None:
        return side
    rows = await conn.fetch(
        "SELECT order_id, user_id, quantity, status, version, fcode, campaign,"
        " (extract(epoch FROM expires_at) * 1000)::bigint AS e,"
        " (extract(epoch FROM created_at) * 1000)::bigint AS c,"
        " (extract(epoch FROM updated_at) * 1000)::bigint AS u"
        " FROM orders WHERE sale_id = $1",
        sale_id,
    )
    for r in rows:
        side.orders[r["order_id"]] = OrderRow(
            order_id=r["order_id"], sale_id=sale_id, user_id=r["user_id"],
            quantity=r["quantity"], status=r["status"], version=r["version"], expires_ms=r["e"],
            created_ms=r["c"], updated_ms=r["u"], fcode=r["fcode"] or "",
            campaign=r["campaign"] or "",
        )  # fmt: skip
    codes = await conn.fetch(
        "SELECT digest, campaign, bound_user, state, order_id FROM fcodes WHERE sale_id = $1",
        sale_id,
    )
    side.fcodes = {c["digest"]: c for c in codes}
    side.bookings = await conn.fetchval("SELECT count(*) FROM bookings WHERE sale_id = $1", sale_id)
    return side
