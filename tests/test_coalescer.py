"""Script calls of one event-loop tick go out as one pipeline, and each caller still gets its
own answer: its reply, its error, or the connection's failure."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError

from flashsale.engine.coalescer import Coalescer
from flashsale.engine.scripts import LuaScript
from tests import servers
from tests.helpers import Service

private_redis = servers.private_redis

ECHO = "return {KEYS[1], ARGV[1]}"
FAIL_ON_BAD = "if ARGV[1] == 'bad' then return redis.error_reply('bad input') end return ARGV[1]"


class RoundTrips:
    """Counts the connections a client takes from its pool: one for each batch it sends."""

    def __init__(self, redis: Redis) -> None:
        self.pipelines = 0
        pool = redis.connection_pool
        take = pool.get_connection

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.pipelines += 1
            return await take(*args, **kwargs)

        pool.get_connection = counted  # type: ignore[method-assign]


async def test_calls_of_one_tick_share_one_pipeline(redis: Redis) -> None:
    sha = await redis.script_load(ECHO)
    counting = RoundTrips(redis)
    calls = Coalescer(redis)
    replies = await asyncio.gather(*(calls.evalsha(sha, 1, f"k{i}", f"a{i}") for i in range(300)))
    assert replies == [[f"k{i}", f"a{i}"] for i in range(300)]
    assert counting.pipelines == 1
    # calls in later ticks go out in later pipelines
    assert await calls.evalsha(sha, 1, "x", "y") == ["x", "y"]
    assert counting.pipelines == 2


async def test_a_batch_is_cut_at_max_batch(redis: Redis) -> None:
    sha = await redis.script_load(ECHO)
    counting = RoundTrips(redis)
    calls = Coalescer(redis, max_batch=100)
    replies = await asyncio.gather(*(calls.evalsha(sha, 1, "k", str(i)) for i in range(250)))
    assert [r[1] for r in replies] == [str(i) for i in range(250)]
    assert counting.pipelines == 3


async def test_an_error_reaches_only_its_caller(redis: Redis) -> None:
    sha = await redis.script_load(FAIL_ON_BAD)
    calls = Coalescer(redis)
    results = await asyncio.gather(
        calls.evalsha(sha, 0, "good"), calls.evalsha(sha, 0, "bad"), calls.evalsha(sha, 0, "ok"),
        return_exceptions=True,
    )  # fmt: skip
    assert results[0] == "good"
    assert isinstance(results[1], ResponseError)
    assert "bad input" in str(results[1])
    assert results[2] == "ok"


async def test_a_forgotten_script_is_loaded_again(private_redis: servers.PrivateRedis) -> None:
    redis = Redis.from_url(private_redis.url, decode_responses=True)
    try:
        script = LuaScript(name="echo", body=ECHO, sha=await redis.script_load(ECHO))
        calls = Coalescer(redis)
        assert await script(calls, ["k"], ["a"]) == ["k", "a"]
        await redis.script_flush()  # as after a Redis restart or failover
        replies = await asyncio.gather(*(script(calls, ["k"], [str(i)]) for i in range(50)))
        assert [r[1] for r in replies] == [str(i) for i in range(50)]
    finally:
        await redis.aclose()


async def test_a_lost_server_fails_every_caller(private_redis: servers.PrivateRedis) -> None:
    redis = Redis.from_url(private_redis.url, decode_responses=True, socket_timeout=2)
    try:
        sha = await redis.script_load(ECHO)
        calls = Coalescer(redis)
        private_redis.kill()
        results = await asyncio.gather(
            *(calls.evalsha(sha, 1, "k", "a") for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, ConnectionError | OSError) for r in results), results
    finally:
        await redis.aclose()


async def test_the_service_buys_through_one_pipeline_per_tick(service: Service) -> None:
    crowd = 500
    sale_id = (await service.create_sale(stock=crowd))["sale_id"]
    counting = RoundTrips(service.services.engine.redis)
    replies = await asyncio.gather(*(service.buy(sale_id, f"p{i}") for i in range(crowd)))
    assert [r.status for r in replies] == [201] * crowd
    assert counting.pipelines < crowd / 2, counting.pipelines
