"""The network between the service and its stores misbehaves (tests/proxy.py): timeouts turn
into clean 503s, a buy whose reply was lost and which is retried with its Idempotency-Key
never reserves twice, and the service recovers by itself once the network does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from flashsale.settings import Settings
from tests.conftest import ServiceFactory
from tests.helpers import Service, assert_reconciled, gather_limited
from tests.proxy import FaultProxy


async def _proxy_to(url: str) -> FaultProxy:
    parts = urlsplit(url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 0)
    await proxy.start()
    return proxy


@pytest.fixture
async def redis_proxy(settings: Settings) -> AsyncIterator[FaultProxy]:
    proxy = await _proxy_to(settings.redis_url)
    yield proxy
    await proxy.close()


@pytest.fixture
async def pg_proxy(settings: Settings) -> AsyncIterator[FaultProxy]:
    proxy = await _proxy_to(settings.database_url)
    yield proxy
    await proxy.close()


async def _through(
    make_service: ServiceFactory, settings: Settings, proxy: FaultProxy, **overrides: object
) -> Service:
    return await make_service(
        redis_url=proxy.url_for(settings.redis_url), redis_timeout_s=0.5, **overrides
    )


def _unavailable(reply: object) -> bool:
    status = getattr(reply, "status", None)
    body = getattr(reply, "body", {})
    return status == 503 and body.get("error") == "unavailable"


async def test_a_silent_redis_is_a_quick_503_and_the_service_recovers(
    make_service: ServiceFactory, settings: Settings, redis_proxy: FaultProxy
) -> None:
    service = await _through(make_service, settings, redis_proxy)
    sale_id = (await service.create_sale(stock=10))["sale_id"]
    assert (await service.buy(sale_id, "before")).status == 201

    redis_proxy.mode = "blackhole"
    started = time.monotonic()
    replies = await gather_limited(5, *(service.buy(sale_id, f"dark{i}") for i in range(5)))
    assert all(_unavailable(r) for r in replies), [r.body for r in replies]
    assert time.monotonic() - started < 4.0  # bounded by the Redis timeout, not hanging

    redis_proxy.mode = "pass"
    assert (await service.buy(sale_id, "after")).status == 201
    stats = await service.stats(sale_id)
    assert stats["reserved"] == 2  # the refused buys reserved nothing
    await assert_reconciled(service, sale_id)


async def test_lost_replies_retried_with_their_key_never_reserve_twice(
    make_service: ServiceFactory, settings: Settings, redis_proxy: FaultProxy, redis: Redis
) -> None:
    service = await _through(make_service, settings, redis_proxy)
    sale_id = (await service.create_sale(stock=100, per_user_limit=1))["sale_id"]
    users = [f"lost{i}" for i in range(20)]

    redis_proxy.mode = "drop_replies"  # the buys reach Redis; their answers never come back
    first = await gather_limited(20, *(service.buy(sale_id, u, key=f"k-{u}") for u in users))
    assert all(_unavailable(r) for r in first), [r.body for r in first]

    redis_proxy.mode = "pass"
    again = await gather_limited(20, *(service.buy(sale_id, u, key=f"k-{u}") for u in users))
    assert [r.status for r in again] == [201] * 20, [r.body for r in again]
    assert all(r.headers.get("Idempotent-Replayed") == "true" for r in again)
    stats = await service.stats(sale_id)
    assert (stats["reserved"], stats["available"]) == (20, 80)  # once each, not twice
    holders = service.services.engine.keys.sale(sale_id).holders
    held = await redis.hgetall(holders)  # type: ignore[misc]
    assert held == {u: "1" for u in users}
    await assert_reconciled(service, sale_id)


async def test_reset_and_refused_connections_heal_by_themselves(
    make_service: ServiceFactory, settings: Settings, redis_proxy: FaultProxy
) -> None:
    service = await _through(make_service, settings, redis_proxy)
    sale_id = (await service.create_sale(stock=50))["sale_id"]
    assert (await service.buy(sale_id, "r0")).status == 201
    redis_proxy.reset_all()  # every open connection gets a TCP reset
    assert (await service.buy(sale_id, "r1")).status == 201  # reconnected, resent once

    redis_proxy.mode = "refuse"
    redis_proxy.reset_all()
    refused = await service.buy(sale_id, "r2")
    assert _unavailable(refused), refused.body
    redis_proxy.mode = "pass"
    replies = await gather_limited(10, *(service.buy(sale_id, f"r3-{i}") for i in range(10)))
    assert {r.status for r in replies} == {201}
    assert (await service.stats(sale_id))["reserved"] == 12
    await assert_reconciled(service, sale_id)


async def test_a_slow_redis_is_slow_not_wrong(
    make_service: ServiceFactory, settings: Settings, redis_proxy: FaultProxy
) -> None:
    service = await _through(make_service, settings, redis_proxy)
    sale_id = (await service.create_sale(stock=5))["sale_id"]
    redis_proxy.mode, redis_proxy.delay_s = "delay", 0.05
    started = time.monotonic()
    replies = await gather_limited(10, *(service.buy(sale_id, f"s{i}") for i in range(10)))
    assert sorted(r.status for r in replies) == [201] * 5 + [409] * 5
    assert time.monotonic() - started >= 0.1  # both ways delayed
    redis_proxy.mode = "pass"
    await assert_reconciled(service, sale_id)


async def test_a_silent_postgres_stalls_the_writer_not_the_sale(
    make_service: ServiceFactory, settings: Settings, pg_proxy: FaultProxy
) -> None:
    """Default confirm mode: buys go on while PostgreSQL is unreachable, and every order is
    written once it is back (the writer's queries time out and are retried)."""
    service = await make_service(database_url=pg_proxy.url_for(settings.database_url),
                                 pg_timeout_s=1.0)  # fmt: skip
    sale_id = (await service.create_sale(stock=100))["sale_id"]
    pg_proxy.mode = "blackhole"
    replies = await gather_limited(20, *(service.buy(sale_id, f"p{i}") for i in range(40)))
    assert {r.status for r in replies} == {201}
    await asyncio.sleep(1.5)  # the writer's batch times out at least once
    pg_proxy.mode = "pass"
    pg_proxy.reset_all()
    await assert_reconciled(service, sale_id)
