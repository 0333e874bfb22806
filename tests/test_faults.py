"""Faults on purpose: a writer killed between commit and acknowledgement, PostgreSQL crashing
under confirm mode "postgres", Redis frozen past a reservation deadline, Redis SIGKILLed with
its AOF fsynced at every write. Each promise is checked against what the stores hold after."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
from redis.asyncio import Redis

from flashsale.engine.keys import WRITER_GROUP, Keyspace
from flashsale.settings import ConfirmMode, Settings
from flashsale.store.writer import OrderWriter
from tests import servers
from tests.conftest import ServiceFactory
from tests.helpers import Reply, assert_reconciled, flashsale_env, gather_limited

private_redis = servers.private_redis
private_postgres = servers.private_postgres

REPO = Path(__file__).resolve().parent.parent


# -- helpers --------------------------------------------------------------------------------


async def start_writer(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    """``flashsale writer`` as a process of its own, its output in ``log``."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flashsale", "writer",
            env=env, cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip


async def reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


async def wait_until(what: str, check: Any, timeout_s: float, interval_s: float = 0.02) -> Any:
    """Poll the async ``check`` until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s (last: {value!r})")
        await asyncio.sleep(interval_s)


async def pending_count(redis: Redis, stream: str) -> int:
    summary = cast(dict[str, Any], await redis.xpending(stream, WRITER_GROUP))
    return int(summary["pending"])


async def redis_orders(redis: Redis, prefix: str, sale_id: str) -> dict[str, dict[str, str]]:
    """Every order hash of a sale, straight from Redis (SCAN of its order keys)."""
    base = Keyspace(prefix).sale(sale_id).order("")
    keys = [k async for k in redis.scan_iter(match=base + "*", count=1000)]
    orders = {}
    for key in keys:
        orders[key[len(base) :]] = cast(dict[str, str], await redis.hgetall(key))
    return orders


# -- a. the writer dies between its commit and its acknowledgement --------------------------


@pytest.mark.parametrize(
    ("seed", "batch_size", "healer"),
    [(1, 50, "process"), (2, 7, "process"), (3, 128, "process"), (4, 50, "late"), (5, 7, "late")],
)
async def test_writer_killed_between_commit_and_ack_loses_and_doubles_nothing(
    make_service: ServiceFactory,
    settings: Settings,
    redis: Redis,
    tmp_path: Path,
    seed: int,
    batch_size: int,
    healer: str,
) -> None:
    """healer "process": a second ``flashsale writer`` (reclaim after 200 ms) takes over.
    healer "late": an in-process writer first drains every newer entry and only then reclaims
    the dead batch, so stale versions reach PostgreSQL last and must change nothing."""
    service = await make_service(run_writer=False)
    stock = 150
    sale_id = (await service.create_sale(stock=stock, per_user_limit=1))["sale_id"]
    stream = Keyspace(settings.key_prefix).sale(sale_id).events
    rng = random.Random(seed)

    users = [f"s{seed}u{i}" for i in range(200)]
    rng.shuffle(users)
    replies = await gather_limited(100, *(service.buy(sale_id, u) for u in users))
    assert Counter(r.status for r in replies) == {201: stock, 409: 200 - stock}
    owner = {r.body["order"]["order_id"]: u for u, r in zip(users, replies, strict=True)
             if r.status == 201}  # fmt: skip
    losers = [u for u, r in zip(users, replies, strict=True) if r.status != 201]

    # several events per order: pay some, cancel some, and let the losers race for the
    # cancelled units while the cancels happen
    ids = sorted(owner)
    rng.shuffle(ids)
    to_pay, to_cancel = ids[:50], ids[50:80]
    actions = [service.pay(o) for o in to_pay]
    actions += [service.order_action(o, owner[o], "cancel") for o in to_cancel]
    actions += [service.buy(sale_id, u) for u in losers]
    mixed = list(range(len(actions)))
    rng.shuffle(mixed)
    results = await gather_limited(50, *(actions[i] for i in mixed))
    answers: list[Reply] = [results[mixed.index(i)] for i in range(len(actions))]
    assert all(a.status == 200 for a in answers[:80]), [a.body for a in answers[:80]]
    for user, reply in zip(losers, answers[80:], strict=True):
        assert reply.status in (201, 409), reply.body
        if reply.status == 201:
            owner[reply.body["order"]["order_id"]] = user

    events = await redis.xlen(stream)
    # an order event per order and change, and a payment event per payment
    assert events == len(owner) + 80 + len(to_pay)

    # 1. a writer that SIGKILLs itself right after its first commit
    log = tmp_path / "writers.log"
    env = flashsale_env(settings, FLASHSALE_WRITER_BATCH_SIZE=str(batch_size))
    doomed = await start_writer(env | {"FLASHSALE_FAILPOINTS": "writer.after_commit=kill"}, log)
    try:
        code = await asyncio.wait_for(doomed.wait(), 30)
    finally:
        await reap(doomed)
    assert code == -signal.SIGKILL, f"writer exited {code}:\n{log.read_text()}"

    # it committed one batch and acknowledged none of it
    batch = min(batch_size, events)
    assert await pending_count(redis, stream) == batch
    assert await redis.xlen(stream) == events
    entries = await redis.xrange(stream, count=batch)
    newest: dict[str, int] = {}
    for _, fields in entries:
        v = int(fields["order_v"] if fields.get("kind") == "payment" else fields["v"])
        newest[fields["order_id"]] = max(newest.get(fields["order_id"], 0), v)
    rows = await service.services.pool.fetch(
        "SELECT order_id, version FROM orders WHERE sale_id = $1", sale_id
    )
    assert {r["order_id"]: r["version"] for r in rows} == newest

    # 2. a second writer takes the dead one's entries over and finishes the job
    async def drained() -> bool:
        return await redis.xlen(stream) == 0 and await pending_count(redis, stream) == 0

    if healer == "process":
        second = await start_writer(env | {"FLASHSALE_WRITER_RECLAIM_IDLE_MS": "200"}, log)
        try:
            await wait_until("stream drained", drained, timeout_s=20)
        finally:
            await reap(second)
        assert "claimed" in log.read_text(), "the dead writer's entries were never reclaimed"
    else:
        writer = OrderWriter(
            service.services.engine.redis, service.services.pool,
            Keyspace(settings.key_prefix), batch_size=batch_size, block_ms=50,
            reclaim_idle_ms=200, consumer="late-healer",
        )  # fmt: skip
        written = await writer.drain()  # new entries only: the dead batch is not its own
        assert written == events - batch
        assert await pending_count(redis, stream) == batch
        await asyncio.sleep(0.25)  # the dead batch is idle past reclaim_idle_ms for sure
        for _ in range(5):
            await writer.step()  # the first one reclaims
            if await drained():
                break
        assert await drained()
    stats = await service.wait_for_postgres(sale_id)

    consumers = await redis.xinfo_consumers(stream, WRITER_GROUP)
    assert all(c["pending"] == 0 for c in consumers), consumers
    rows = await service.services.pool.fetch(
        "SELECT order_id, user_id, status, version FROM orders WHERE sale_id = $1", sale_id
    )
    assert len(rows) == len({r["order_id"] for r in rows}) == len(owner)
    in_redis = await redis_orders(redis, settings.key_prefix, sale_id)
    assert set(in_redis) == set(owner)
    for row in rows:
        truth = in_redis[row["order_id"]]
        assert row["user_id"] == owner[row["order_id"]]
        assert (row["status"], row["version"]) == (truth["status"], int(truth["v"]))
    by_status = Counter(r["status"] for r in rows)
    assert by_status["paid"] == 50
    assert by_status["cancelled"] == 30
    assert stats["orders_in_postgres"]["total"] == len(owner)
    assert stats["available"] + stats["reserved"] + stats["paid"] == stock
    await assert_reconciled(service, sale_id)


# -- b. confirm mode "postgres" while PostgreSQL crashes and comes back ----------------------


async def test_confirm_mode_postgres_across_a_postgres_crash(
    private_postgres: servers.PrivatePostgres, make_service: ServiceFactory
) -> None:
    service = await make_service(
        confirm_mode=ConfirmMode.POSTGRES,
        run_writer=False,
        database_url=private_postgres.url,
        pg_confirm_timeout_s=2.0,
    )
    engine = service.services.engine
    sale_id = (await service.create_sale(stock=10, per_user_limit=1))["sale_id"]
    health = await service.call("GET", "/healthz")
    assert health.status == 200, health.body

    async def row_of(order_id: str) -> asyncpg.Record | None:
        conn = await asyncpg.connect(private_postgres.url)
        try:
            return await conn.fetchrow(
                "SELECT user_id, quantity, status FROM orders WHERE order_id = $1", order_id
            )
        finally:
            await conn.close()

    # 201 means committed: the row is there at once, with no writer running
    first = await service.buy(sale_id, "alice")
    assert first.status == 201, first.body
    alice_order = first.body["order"]["order_id"]
    row = await row_of(alice_order)
    assert row is not None
    assert dict(row) == {"user_id": "alice", "quantity": 1, "status": "reserved"}

    # PostgreSQL crashes: buys are refused and undone, health says so
    before = (await engine.get_sale(sale_id)).counters
    private_postgres.stop(mode="immediate")
    health = await service.call("GET", "/healthz")
    assert health.status == 503, health.body
    assert health.body["redis"] == "ok"
    assert health.body["postgres"] != "ok"

    started = time.monotonic()
    refused = await service.buy(sale_id, "bob", key="bob-1")
    assert refused.status == 503, refused.body
    assert refused.body["error"] == "unavailable"
    assert time.monotonic() - started < 2.0 + 1.0
    after = (await engine.get_sale(sale_id)).counters
    assert after.available == before.available
    assert after.reserved == before.reserved
    assert after.paid == before.paid
    assert after.cancelled == before.cancelled + 1  # the undone reservation, nothing else
    holders = engine.keys.sale(sale_id).holders
    assert int(await engine.redis.hget(holders, "bob") or 0) == 0

    # PostgreSQL is back: health recovers, bob's retry with the same key is a fresh buy
    private_postgres.start()

    async def healthy() -> bool:
        return (await service.call("GET", "/healthz")).status == 200

    await wait_until("healthz 200 after the restart", healthy, timeout_s=10, interval_s=0.05)
    retry = await service.buy(sale_id, "bob", key="bob-1")
    assert retry.status == 201, retry.body
    assert "Idempotent-Replayed" not in retry.headers
    row = await row_of(retry.body["order"]["order_id"])
    assert row is not None
    assert row["user_id"] == "bob"
    survivor = await row_of(alice_order)  # committed before the crash: still there after it
    assert survivor is not None
    assert survivor["status"] == "reserved"
    final = (await engine.get_sale(sale_id)).counters
    assert (final.available, final.reserved) == (before.available - 1, before.reserved + 1)
    # the undone reservation reaches PostgreSQL as cancelled, through the events stream
    await OrderWriter(engine.redis, service.services.pool, engine.keys).drain()
    await assert_reconciled(service, sale_id)


# -- c. Redis frozen past the reservations' deadline -----------------------------------------


async def test_units_come_back_once_after_redis_was_frozen_past_the_deadline(
    private_redis: servers.PrivateRedis, make_service: ServiceFactory
) -> None:
    service = await make_service(redis_url=private_redis.url)
    engine = service.services.engine
    stock = 10
    sale_id = (await service.create_sale(stock=stock, per_user_limit=1, reservation_ttl_s=1))[
        "sale_id"
    ]
    users = [f"u{i}" for i in range(5)]
    replies = await gather_limited(5, *(service.buy(sale_id, u) for u in users))
    assert [r.status for r in replies] == [201] * 5, [r.body for r in replies]
    orders = {r.body["order"]["order_id"]: u for u, r in zip(users, replies, strict=True)}

    private_redis.pause()
    try:
        await asyncio.sleep(2.0)  # the outage itself, past every deadline
    finally:
        private_redis.resume()

    async def returned() -> bool:
        c = (await engine.get_sale(sale_id)).counters
        return c.expired == 5 and c.available == stock

    await wait_until("units back after the pause", returned, timeout_s=3.0)
    for order_id, user in orders.items():
        reply = await service.call("GET", f"/v1/orders/{order_id}", headers=service.auth(user))
        assert reply.status == 200, reply.body
        assert reply.body["order"]["status"] == "expired"
    # a late payment cannot bring its unit back (nor return it a second time): it buys one
    # of the free units, as the sale has them and nobody queues for them
    late_order = next(iter(orders))
    late = await service.pay(late_order)
    assert late.status == 200, late.body
    assert (late.body["payment"]["outcome"], late.body["payment"]["late"]) == ("paid", True)

    await asyncio.sleep(1.0)
    c = (await engine.get_sale(sale_id)).counters
    assert (c.available, c.reserved, c.paid, c.expired, c.cancelled, c.paid_late) == (
        stock - 1, 0, 1, 5, 0, 1,
    )  # fmt: skip
    k = engine.keys.sale(sale_id)
    held = cast(dict[str, str], await engine.redis.hgetall(k.holders))
    assert {u: int(v) for u, v in held.items() if int(v)} == {orders[late_order]: 1}, held
    assert await engine.redis.zcard(k.deadlines) == 0
    stats = await service.wait_for_postgres(sale_id)
    assert stats["orders_in_postgres"]["expired"] == 4
    await assert_reconciled(service, sale_id)


# -- d. Redis SIGKILLed mid-crowd, restarted from its AOF -------------------------------------


async def test_redis_crash_keeps_every_confirmed_order_and_never_oversells(
    private_redis: servers.PrivateRedis, make_service: ServiceFactory, settings: Settings
) -> None:
    service = await make_service(redis_url=private_redis.url)
    engine = service.services.engine
    stock = 300
    sale_id = (await service.create_sale(stock=stock, per_user_limit=1))["sale_id"]
    confirmed: dict[str, tuple[str, str]] = {}  # order id -> (user, status)

    def note(users: list[str], replies: list[Reply]) -> Counter[int]:
        for user, reply in zip(users, replies, strict=True):
            if reply.status == 201:
                confirmed[reply.body["order"]["order_id"]] = (user, "reserved")
        return Counter(r.status for r in replies)

    first = [f"a{i}" for i in range(100)]
    assert note(first, await gather_limited(50, *(service.buy(sale_id, u) for u in first))) == {
        201: 100
    }
    for order_id in sorted(confirmed)[:20]:
        user = confirmed[order_id][0]
        assert (await service.pay(order_id)).body["payment"]["outcome"] == "paid"
        confirmed[order_id] = (user, "paid")

    # a crowd of buys; Redis is SIGKILLed once 40 of them have been answered
    second = [f"b{i}" for i in range(150)]
    answered = 0

    async def buy_then_maybe_kill(user: str) -> Reply:
        nonlocal answered
        reply = await service.buy(sale_id, user)
        answered += 1
        if answered == 40:
            private_redis.kill()
        return reply

    statuses = note(second, await gather_limited(10, *(buy_then_maybe_kill(u) for u in second)))
    assert set(statuses) <= {201, 503}, statuses
    assert statuses[201] >= 40
    assert statuses[503] > 0, "the kill came too late to hit the crowd"

    private_redis.start()  # same port, same directory: the AOF is replayed

    async def healthy() -> bool:
        return (await service.call("GET", "/healthz")).status == 200

    await wait_until("healthz 200 after the restart", healthy, timeout_s=10, interval_s=0.05)
    for order_id, (user, status) in confirmed.items():
        reply = await service.call("GET", f"/v1/orders/{order_id}", headers=service.auth(user))
        assert reply.status == 200, (order_id, reply.body)
        assert reply.body["order"]["status"] == status

    # the sale goes on after the restart, and sells out without selling one unit twice
    third = [f"c{i}" for i in range(250)]
    statuses = note(third, await gather_limited(50, *(service.buy(sale_id, u) for u in third)))
    assert set(statuses) <= {201, 409, 503}, statuses
    assert statuses[201] > 0
    c = (await engine.get_sale(sale_id)).counters
    assert c.available + c.reserved + c.paid == stock
    assert c.available == 0
    assert len(confirmed) <= stock

    in_redis = await redis_orders(engine.redis, settings.key_prefix, sale_id)
    assert set(confirmed) <= set(in_redis)
    units: Counter[str] = Counter()
    for order in in_redis.values():
        units[order["status"]] += int(order["qty"])
    assert units["reserved"] == c.reserved
    assert units["paid"] == c.paid
    assert units["reserved"] + units["paid"] <= stock
    held = cast(dict[str, str], await engine.redis.hgetall(engine.keys.sale(sale_id).holders))
    assert sum(int(v) for v in held.values()) == c.reserved + c.paid
    assert all(int(v) <= 1 for v in held.values()), "a shopper holds more than the limit"
    await assert_reconciled(service, sale_id)


async def test_no_503_once_redis_is_back(
    private_redis: servers.PrivateRedis, make_service: ServiceFactory
) -> None:
    service = await make_service(redis_url=private_redis.url)
    sale_id = (await service.create_sale(stock=1000, per_user_limit=1))["sale_id"]
    warm = await gather_limited(50, *(service.buy(sale_id, f"w{i}") for i in range(100)))
    assert {r.status for r in warm} == {201}
    private_redis.kill()
    private_redis.start()

    async def healthy() -> bool:
        return (await service.call("GET", "/healthz")).status == 200

    await wait_until("healthz 200 after the restart", healthy, timeout_s=10, interval_s=0.05)
    after = await gather_limited(50, *(service.buy(sale_id, f"x{i}") for i in range(100)))
    assert Counter(r.status for r in after) == {201: 100}
    await assert_reconciled(service, sale_id)


# -- e. PostgreSQL down in the middle of a sale, default confirm mode -------------------------

# 3 s in the suite; FLASHSALE_FAULT_PG_OUTAGE_S=30 for the full half minute
PG_OUTAGE_S = float(os.environ.get("FLASHSALE_FAULT_PG_OUTAGE_S", "3"))


@pytest.mark.timeout(PG_OUTAGE_S + 120)
async def test_the_sale_goes_on_while_postgres_is_down_and_every_order_arrives_after(
    private_postgres: servers.PrivatePostgres, make_service: ServiceFactory
) -> None:
    """``pg_ctl stop -m immediate`` mid-sale: buys, payments and cancels go on against Redis,
    the writer waits, and once PostgreSQL is back every order reaches it (reconcile clean)."""
    service = await make_service(database_url=private_postgres.url, pg_timeout_s=2.0)
    stock = 300
    sale_id = (await service.create_sale(stock=stock, per_user_limit=1))["sale_id"]
    confirmed: dict[str, str] = {}

    async def crowd(prefix: str, n: int) -> None:
        replies = await gather_limited(
            30, *(service.buy(sale_id, f"{prefix}{i}") for i in range(n))
        )
        for i, reply in enumerate(replies):
            assert reply.status in (201, 409), reply.body
            if reply.status == 201:
                confirmed[reply.body["order"]["order_id"]] = f"{prefix}{i}"

    await crowd("before", 100)
    private_postgres.stop(mode="immediate")
    outage_ends = time.monotonic() + PG_OUTAGE_S
    await crowd("during", 150)
    settled = list(confirmed)[:40]
    answers = await gather_limited(20, *(service.pay(o) for o in settled))
    assert {a.body["payment"]["outcome"] for a in answers} == {"paid"}
    await asyncio.sleep(max(0.0, outage_ends - time.monotonic()))
    private_postgres.start()
    await crowd("after", 100)
    assert len(confirmed) == stock  # sold out, none twice

    await assert_reconciled(service, sale_id)
    conn = await asyncpg.connect(private_postgres.url)
    try:
        fetched = await conn.fetch(
            "SELECT order_id, user_id, status FROM orders WHERE sale_id = $1", sale_id
        )
        rows = {r["order_id"]: r for r in fetched}
    finally:
        await conn.close()
    assert set(rows) == set(confirmed)
    assert all(rows[o]["user_id"] == u for o, u in confirmed.items())
    assert sum(rows[o]["status"] == "paid" for o in settled) == 40


# -- f. the sweeper away past the deadlines, then several at once -----------------------------


async def test_deadlines_passed_while_no_sweeper_ran_return_each_unit_once(
    make_service: ServiceFactory,
) -> None:
    """No sweeper runs while the reservations expire; then four sweepers (four processes
    coming back) race over the same deadlines: every unit comes back exactly once."""
    from flashsale.engine.sweeper import Sweeper

    service = await make_service(run_sweeper=False)
    engine = service.services.engine
    stock = 30
    sale_id = (await service.create_sale(stock=stock, reservation_ttl_s=1))["sale_id"]
    replies = await gather_limited(30, *(service.buy(sale_id, f"z{i}") for i in range(20)))
    assert {r.status for r in replies} == {201}
    await asyncio.sleep(1.3)
    c = (await engine.get_sale(sale_id)).counters
    assert (c.available, c.reserved, c.expired) == (stock - 20, 20, 0)  # nobody swept yet

    sweepers = [Sweeper(engine, batch_size=3) for _ in range(4)]
    for _ in range(10):
        await asyncio.gather(*(s.sweep_once() for s in sweepers))
    c = (await engine.get_sale(sale_id)).counters
    assert (c.available, c.reserved, c.expired) == (stock, 0, 20)
    await assert_reconciled(service, sale_id)
