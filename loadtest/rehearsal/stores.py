"""Redis and PostgreSQL, read directly for the verdict and cleaned up after a run.

Only what this run made is removed: keys under a prefix the run chose itself (SCAN + DEL,
never FLUSH) and a database it named itself.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis


async def fetch_orders(database_url: str, sale_id: str) -> dict[str, dict[str, Any]]:
    """The sale's orders in PostgreSQL by order id."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT order_id, user_id, status, quantity FROM orders WHERE sale_id = $1", sale_id
        )
    finally:
        await conn.close()
    return {r["order_id"]: dict(r) for r in rows}


async def users_over_limit(database_url: str, sale_id: str, limit: int) -> list[tuple[str, int]]:
    """Shoppers holding more than ``limit`` units, reserved or paid."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT user_id, sum(quantity) AS units FROM orders WHERE sale_id = $1 "
            "AND status IN ('reserved', 'paid') GROUP BY user_id HAVING sum(quantity) > $2 "
            "ORDER BY units DESC LIMIT 20",
            sale_id,
            limit,
        )
    finally:
        await conn.close()
    return [(r["user_id"], int(r["units"])) for r in rows]


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def drop_database(database_url: str) -> None:
    name = urlsplit(database_url).path.lstrip("/")

    async def drop() -> None:
        conn = await asyncpg.connect(with_database(database_url, "postgres"), timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


def delete_keys(redis_url: str, prefix: str) -> int:
    if not prefix or any(c in prefix for c in "*?[]"):
        raise ValueError(f"refusing to delete keys of prefix {prefix!r}")
    client = redis.Redis.from_url(redis_url)
    deleted = 0
    batch: list[bytes] = []
    try:
        for key in client.scan_iter(match=f"{prefix}:*", count=2000):
            batch.append(key)
            if len(batch) >= 2000:
                deleted += client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += client.unlink(*batch)
    finally:
        client.close()
    return deleted


def redis_pid(redis_url: str) -> int | None:
    """The Redis server's pid when it runs on this machine (to measure its CPU)."""
    try:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=2)
        pid = int(client.info("server")["process_id"])
        client.close()
        with open(f"/proc/{pid}/comm") as f:
            return pid if "redis" in f.read() else None
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None
