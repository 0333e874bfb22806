"""Fixtures: real Redis and PostgreSQL, one throwaway database per run (per worker process under
pytest-xdist), one key prefix per test (its keys deleted when the session ends).

The servers are the local ones unless ``FLASHSALE_TEST_REDIS_URL`` /
``FLASHSALE_TEST_DATABASE_URL`` name others. A missing server skips the tests on a laptop and
fails them under CI (``CI=true``): never a fake in its place.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis as redis_sync
from redis.asyncio import Redis

from flashsale.settings import Settings
from tests.helpers import PAYMENT_SECRET, Service, services_started

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} is not reachable ({exc}); start it or set its FLASHSALE_TEST_* URL"
    if CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("FLASHSALE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis_sync.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis_sync.RedisError as exc:
        unavailable("Redis", exc)
    return url


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh database for this test run, dropped at the end."""
    server = os.environ.get(
        "FLASHSALE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    # each pytest-xdist worker is a session of its own, with a database of its own
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"flashsale_test_{worker}_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        unavailable("PostgreSQL", exc)
    yield urlunsplit(urlsplit(server)._replace(path="/" + name))
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


PREFIX_HEX = 10  # a key prefix is "t" and this many hex digits


@pytest.fixture(scope="session")
def used_key_prefixes(redis_url: str) -> Iterator[set[str]]:
    """The key prefixes this session's tests were given; their keys are deleted at its end.

    One SCAN for the whole session, not one a test: a SCAN walks the server's whole keyspace,
    and a shared Redis can hold other people's millions of keys (a launch rehearsal's)."""
    prefixes: set[str] = set()
    yield prefixes
    client = redis_sync.Redis.from_url(redis_url)
    try:
        keys = [
            key
            for key in client.scan_iter(match="t" + "?" * PREFIX_HEX + ":*", count=10_000)
            if key.split(b":", 1)[0].decode() in prefixes
        ]
        for i in range(0, len(keys), 500):
            client.unlink(*keys[i : i + 500])
    except redis_sync.RedisError:
        pass  # the server went away; nothing to clean that can be reached
    finally:
        client.close()


@pytest.fixture
def key_prefix(used_key_prefixes: set[str]) -> str:
    """A key prefix of this test's own; its keys are deleted at the end of the session (SCAN,
    never FLUSH)."""
    prefix = f"t{uuid.uuid4().hex[:PREFIX_HEX]}"
    used_key_prefixes.add(prefix)
    return prefix


@pytest.fixture
def settings(redis_url: str, database_url: str, key_prefix: str) -> Settings:
    """Settings for one test: its own key prefix, quick background loops."""
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        token_secret="test-secret-0123456789abcdef-" + key_prefix,
        admin_token="test-admin-token-0123456789abcdef-" + key_prefix,
        key_prefix=key_prefix,
        writer_block_ms=100,
        sweeper_interval_s=0.05,
        sold_out_recheck_s=0.1,
        redis_max_connections=128,
        payment_secrets=(PAYMENT_SECRET,),
    )


ServiceFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
async def make_service(settings: Settings) -> AsyncIterator[ServiceFactory]:
    """Start services (real HTTP on loopback); keyword arguments override settings."""
    async with services_started(settings) as make:
        yield make


@pytest.fixture
async def service(make_service: ServiceFactory) -> Service:
    return await make_service()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    from flashsale.store.database import open_pool

    pool = await open_pool(database_url, max_size=4)
    yield pool
    await pool.close()
