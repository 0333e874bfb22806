"""The lean Redis connection of the hot path: replies in order, errors as values, and a
connection that recovers by itself from a crashed or hung server."""

from __future__ import annotations

import asyncio

import hiredis
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flashsale.engine.wire import Wire
from tests import servers

private_redis = servers.private_redis


def packed(*commands: tuple[object, ...]) -> bytes:
    return b"".join(hiredis.pack_command(c) for c in commands)


async def test_replies_come_back_in_order_with_errors_as_values(redis_url: str) -> None:
    wire = Wire(redis_url)
    try:
        replies = await wire.send(
            packed(("PING",), ("EVALSHA", "0" * 40, 0), ("ECHO", "é"), ("NOSUCHCOMMAND",)), 4
        )
        assert replies[0] == "PONG"
        assert isinstance(replies[1], NoScriptError)
        assert replies[2] == "é"
        assert isinstance(replies[3], ResponseError)
        # many batches in flight at once on the one connection still line up
        answers = await asyncio.gather(
            *(
                wire.send(
                    packed(
                        ("ECHO", str(i)),
                    ),
                    1,
                )
                for i in range(500)
            )
        )
        assert answers == [[str(i)] for i in range(500)]
    finally:
        await wire.close()


async def test_it_selects_the_database_of_its_url(private_redis: servers.PrivateRedis) -> None:
    wire = Wire(private_redis.url.rsplit("/", 1)[0] + "/3")
    check = Redis.from_url(private_redis.url.rsplit("/", 1)[0] + "/3", decode_responses=True)
    try:
        assert await wire.send(packed(("SET", "where", "db3")), 1) == ["OK"]
        assert await check.get("where") == "db3"
    finally:
        await wire.close()
        await check.aclose()


async def test_a_crash_fails_the_waiting_and_the_next_call_reconnects(
    private_redis: servers.PrivateRedis,
) -> None:
    wire = Wire(private_redis.url, timeout_s=2)
    try:
        assert await wire.send(packed(("PING",)), 1) == ["PONG"]
        private_redis.kill()
        with pytest.raises(ConnectionError):
            await wire.send(packed(("PING",)), 1)
        private_redis.start()
        assert await wire.send(packed(("PING",)), 1) == ["PONG"]
    finally:
        await wire.close()


async def test_a_hung_server_times_out_and_is_used_again_once_back(
    private_redis: servers.PrivateRedis,
) -> None:
    wire = Wire(private_redis.url, timeout_s=0.5)
    try:
        assert await wire.send(packed(("PING",)), 1) == ["PONG"]
        private_redis.pause()
        results = await asyncio.gather(
            *(wire.send(packed(("PING",)), 1) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, RedisTimeoutError | ConnectionError) for r in results), results
        private_redis.resume()
        assert await wire.send(packed(("PING",)), 1) == ["PONG"]
    finally:
        await wire.close()


async def test_during_an_outage_callers_fail_fast(private_redis: servers.PrivateRedis) -> None:
    """With Redis gone, a crowd of batches fails within about one connect attempt, not one
    attempt after another."""
    wire = Wire(private_redis.url, connect_timeout_s=0.5)
    try:
        assert await wire.send(packed(("PING",)), 1) == ["PONG"]
        private_redis.kill()
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            *(wire.send(packed(("PING",)), 1) for _ in range(100)), return_exceptions=True
        )
        assert all(isinstance(r, ConnectionError) for r in results), results
        assert loop.time() - started < 1.5
        private_redis.start()
        await asyncio.sleep(0.3)  # past the back-off
        assert await wire.send(packed(("PING",)), 1) == ["PONG"]
    finally:
        await wire.close()
    with pytest.raises(ConnectionError):  # closed for good: no reconnecting after shutdown
        await wire.send(packed(("PING",)), 1)


def test_only_plain_tcp_urls_take_the_lean_connection() -> None:
    assert Wire.supports("redis://127.0.0.1:6379/0")
    assert Wire.supports("redis://:secret@cache.internal:6380/2")
    assert not Wire.supports("rediss://cache.internal:6380/0")
    assert not Wire.supports("unix:///run/redis.sock")
    with pytest.raises(ValueError, match="redis://"):
        Wire("unix:///run/redis.sock")
