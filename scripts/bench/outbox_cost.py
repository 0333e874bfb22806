"""What the outbox costs the order writer: the same order events written to PostgreSQL with
their outbox rows (as flashsale does) and without (``record_events`` skipped), in turn.

Each round makes a fresh sale on the local Redis (a key prefix of its own) and a throwaway
database, reserves ORDERS units through the engine (buy.lua) and pays PAY_SHARE of them
(pay.lua, nine in ten by default), so that the sale's events stream holds what a sale leaves
for the writer (an order event per reservation, and per payment an order event and a payment
event), then times
``OrderWriter.drain`` carrying them to PostgreSQL. Besides the wall time it reports the CPU
seconds of this process (the writer's Python) and of the PostgreSQL backends of its pool
(from /proc, so PostgreSQL must run on this machine), which vary less than the wall time on a
shared machine. Rounds alternate between the two variants; the ratios compare neighbours.
``scripts/bench-outbox`` counts instructions instead, which vary far less
(scripts/bench/outbox_instructions.py, which fills its sale with ``_fill`` from here).

    PYTHONPATH=. .venv/bin/python scripts/bench/outbox_cost.py [--orders N] [--rounds R]
        [--pay-share F] [--only with|without]   # one variant, e.g. under valgrind
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

import flashsale.store.writer as writer_module
from flashsale.engine.connection import connect_redis
from flashsale.engine.engine import BuyOutcome, Engine
from flashsale.engine.keys import Keyspace
from flashsale.models import SaleDefinition
from flashsale.payments.decide import decide
from flashsale.payments.notifications import Notification
from flashsale.settings import Settings
from flashsale.store import sales
from flashsale.store.database import open_pool
from flashsale.store.migrate import migration_parameters
from flashsale.store.writer import OrderWriter

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
CONCURRENCY = 50  # below the Redis pool of the default settings
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def _gather_limited(n: int, calls: list[Callable[[], Awaitable[Any]]]) -> None:
    pending = iter(calls)

    async def worker() -> None:
        for call in pending:
            await call()

    await asyncio.gather(*(worker() for _ in range(n)))


async def _fill(engine: Engine, pool: asyncpg.Pool, orders: int, pay_share: float) -> str:
    """A fresh sale with ``orders`` reservations, ``pay_share`` of them paid; its id."""
    now = time.time_ns() // 1_000_000
    sale_id = f"oc-{secrets.token_hex(4)}"
    sale = SaleDefinition(
        sale_id=sale_id, sku="bench-outbox", name="outbox cost", price_cents=100, stock=orders,
        per_user_limit=1, starts_ms=now - 1000, ends_ms=now + 3_600_000,
        reservation_ttl_s=3600,
    )  # fmt: skip
    await sales.insert_sale(pool, sale)
    await engine.arm_sale(sale)
    bought: list[str] = []

    async def buy(i: int) -> None:
        outcome = await engine.buy(sale_id, f"user-{i:07d}", 1)
        assert isinstance(outcome, BuyOutcome)
        bought.append(outcome.order.order_id)

    await _gather_limited(CONCURRENCY, [lambda i=i: buy(i) for i in range(orders)])

    async def pay(i: int, order_id: str) -> None:
        notice = Notification(f"msg_{sale_id}_{i}", order_id, f"pay_{sale_id}_{i}", 100, "USD")
        await decide(engine, notice, time.time_ns() // 1_000_000, webhook_ttl_s=3600)

    paying = [(i, o) for i, o in enumerate(bought) if i < round(pay_share * len(bought))]
    await _gather_limited(CONCURRENCY, [lambda i=i, o=o: pay(i, o) for i, o in paying])
    return sale_id


async def _round(
    engine: Engine, pool: asyncpg.Pool, settings: Settings, orders: int, pay_share: float,
    with_outbox: bool,
) -> dict[str, float]:  # fmt: skip
    sale_id = await _fill(engine, pool, orders, pay_share)
    events = await engine.redis.xlen(engine.keys.sale(sale_id).events)
    writer_module.record_events = _record if with_outbox else _skip  # type: ignore[assignment]
    writer = OrderWriter(engine.redis, pool, engine.keys, batch_size=settings.writer_batch_size)
    backends = [r["pid"] for r in await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend'"
    )]  # fmt: skip
    pg0 = sum(_cpu_s(p) for p in backends)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    written = await writer.drain()
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    pg = sum(_cpu_s(p) for p in backends) - pg0
    rows = await pool.fetchval("SELECT count(*) FROM outbox WHERE sale_id = $1", sale_id)
    assert written == events, (written, events)
    # an event per reservation and per payment that paid (a payment's own event adds none)
    paid = round(pay_share * orders)
    assert rows == (orders + paid if with_outbox else 0), (rows, orders, paid)
    return {"events": written, "wall_s": wall, "writer_cpu_s": cpu, "pg_cpu_s": pg,
            "outbox_rows": rows}  # fmt: skip


_record = writer_module.record_events


async def _skip(conn: asyncpg.Connection, rows: Any) -> None:
    return None


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pay-share", type=float, default=0.9)
    p.add_argument("--only", choices=["with", "without"])
    args = p.parse_args()
    tag = secrets.token_hex(4)
    database_url = SERVER.rsplit("/", 1)[0] + f"/flashsale_outbox_cost_{tag}"
    settings = Settings(
        redis_url=os.environ.get("FLASHSALE_REDIS_URL", "redis://127.0.0.1:6379/0"),
        database_url=database_url, key_prefix=f"outbox-cost-{tag}",
        token_secret=secrets.token_urlsafe(48), admin_token=secrets.token_urlsafe(48),
    )  # fmt: skip
    redis = connect_redis(settings)
    engine = Engine(redis, Keyspace(settings.key_prefix), sold_out_recheck_s=0.1,
                    idempotency_ttl_s=settings.idempotency_ttl_s)  # fmt: skip
    pool = await open_pool(database_url, min_size=1, max_size=1,
                           parameters=migration_parameters(default_currency="USD"))  # fmt: skip
    variants = [args.only == "with"] if args.only else [True, False]
    try:
        print(f"outbox cost: {args.orders:,} orders a round ({args.pay_share:.0%} paid), writer "
              f"batches of {settings.writer_batch_size}, database "
              f"{database_url.rsplit('/', 1)[1]}")  # fmt: skip
        for r in range(1, args.rounds + 1):
            for with_outbox in variants if r % 2 else variants[::-1]:
                m = await _round(engine, pool, settings, args.orders, args.pay_share, with_outbox)
                name = "with outbox   " if with_outbox else "without outbox"
                print(
                    f"round {r} {name}: {m['events']:,} events in {m['wall_s']:.2f} s = "
                    f"{m['events'] / m['wall_s']:,.0f} events/s; CPU a thousand events: writer "
                    f"{1000 * m['writer_cpu_s'] / m['events']:.3f} s, PostgreSQL "
                    f"{1000 * m['pg_cpu_s'] / m['events']:.3f} s; {m['outbox_rows']:,} outbox rows",
                    flush=True,
                )
    finally:
        await pool.close()
        keys = [k async for k in redis.scan_iter(match=f"{settings.key_prefix}:*", count=2000)]
        for i in range(0, len(keys), 2000):
            await redis.unlink(*keys[i : i + 2000])
        await redis.aclose()
        conn = await asyncpg.connect(SERVER)
        await conn.execute(f'DROP DATABASE IF EXISTS "flashsale_outbox_cost_{tag}" WITH (FORCE)')
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
