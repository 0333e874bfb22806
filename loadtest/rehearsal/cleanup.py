"""Removing the sale a rehearsal made from stores it shares (a running service's, or ones
named by ``FLASHSALE_*``), or saying what it keeps (``--keep``).

Only the rehearsal's own sale goes: its Redis keys (every one carries the sale's hash tag,
``<prefix>:{<sale_id>}:...``, found by SCAN, never FLUSH; and its id in the index of armed
sales) and its rows in PostgreSQL (order events and their deliveries, payments, F-codes and
their campaigns, orders, bookings, the sale). The sale is taken out of the index first, so the
service's writer and sweeper stop looking at it; the rows go in one transaction; the keys last
(anything the writer still wrote for the sale meanwhile is under its tag).
"""

from __future__ import annotations

import asyncio

import asyncpg
import redis

# in an order that no foreign key refuses (outbox_deliveries go with their outbox rows)
TABLES = ("outbox", "payments", "fcodes", "fcode_campaigns", "orders", "bookings", "sales")
_GLOB = "*?[]\\"


def glob_escape(text: str) -> str:
    return "".join("\\" + c if c in _GLOB else c for c in text)


def sale_key_pattern(prefix: str, sale_id: str) -> str:
    """Every key of one sale: its hash tag under the deployment's prefix."""
    return f"{glob_escape(prefix)}:{{{glob_escape(sale_id)}}}:*"


def _client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def count_sale_keys(redis_url: str, prefix: str, sale_id: str) -> int:
    client = _client(redis_url)
    try:
        return sum(1 for _ in client.scan_iter(match=sale_key_pattern(prefix, sale_id), count=2000))
    finally:
        client.close()


def delete_sale_keys(redis_url: str, prefix: str, sale_id: str) -> int:
    """Delete one sale's keys; how many."""
    if not prefix or not sale_id:
        raise ValueError("refusing to delete keys without a prefix and a sale id")
    client = _client(redis_url)
    deleted = 0
    batch: list[bytes] = []
    try:
        client.srem(f"{prefix}:sales", sale_id)  # out of the writer's and sweeper's walk
        for key in client.scan_iter(match=sale_key_pattern(prefix, sale_id), count=2000):
            batch.append(key)
            if len(batch) >= 2000:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
    finally:
        client.close()
    return deleted


async def _tables_with_sales(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'sale_id' "
        "AND table_schema = current_schema() ORDER BY table_name"
    )
    return [r["table_name"] for r in rows]


async def count_sale_rows(database_url: str, sale_id: str) -> dict[str, int]:
    """The sale's rows in every table that has a sale_id."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        counts = {}
        for table in await _tables_with_sales(conn):
            n = await conn.fetchval(f'SELECT count(*) FROM "{table}" WHERE sale_id = $1', sale_id)
            if n:
                counts[table] = int(n)
        return counts
    finally:
        await conn.close()


async def delete_sale_rows(
    database_url: str, sale_id: str
) -> tuple[dict[str, int], dict[str, int]]:
    """Delete one sale's rows: (deleted by table, rows left in tables this version does not
    know to clean, by table)."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        present = await _tables_with_sales(conn)
        deleted = {}
        async with conn.transaction():
            for table in TABLES:
                if table in present:
                    status = await conn.execute(f"DELETE FROM {table} WHERE sale_id = $1", sale_id)
                    if n := int(status.split()[-1]):
                        deleted[table] = n
        left = {}
        for table in present:
            if table not in TABLES:
                query = f'SELECT count(*) FROM "{table}" WHERE sale_id = $1'
                if n := await conn.fetchval(query, sale_id):
                    left[table] = int(n)
        return deleted, left
    finally:
        await conn.close()


def describe(rows: dict[str, int], keys: int) -> str:
    shown = ", ".join(f"{n:,} {table}" for table, n in rows.items()) or "no rows"
    return f"{shown} in PostgreSQL, {keys:,} Redis keys"


def remove_sale(redis_url: str, prefix: str, database_url: str, sale_id: str) -> str:
    """Remove the sale from both stores; what went (and what could not), as a sentence."""
    client = _client(redis_url)
    try:
        client.srem(f"{prefix}:sales", sale_id)
    finally:
        client.close()
    deleted, left = asyncio.run(delete_sale_rows(database_url, sale_id))
    keys = delete_sale_keys(redis_url, prefix, sale_id)
    said = f"deleted sale {sale_id}: {describe(deleted, keys)}"
    if left:
        said += "; left (tables this rehearsal does not know): " + ", ".join(
            f"{n:,} rows of {t}" for t, n in left.items()
        )
    return said


def kept_sale(redis_url: str, prefix: str, database_url: str, sale_id: str) -> str:
    rows = asyncio.run(count_sale_rows(database_url, sale_id))
    keys = count_sale_keys(redis_url, prefix, sale_id)
    return (
        f"kept sale {sale_id}: {describe(rows, keys)} (keys {prefix}:{{{sale_id}}}:*); "
        f"to remove it: {CLEAN_UP} {sale_id}"
    )


CLEAN_UP = "PYTHONPATH=. .venv/bin/python -m loadtest.rehearsal.cleanup"


def main(argv: list[str] | None = None) -> int:
    """Remove a sale a rehearsal kept, with the FLASHSALE_* variables of its stores."""
    import argparse
    import os

    p = argparse.ArgumentParser(
        prog="python -m loadtest.rehearsal.cleanup",
        description="Remove a sale a rehearsal kept (--keep) from the stores named by "
        "FLASHSALE_REDIS_URL, FLASHSALE_KEY_PREFIX and FLASHSALE_DATABASE_URL: its Redis keys "
        "and its PostgreSQL rows. Only for rehearsal sales: the orders go too.",
    )
    p.add_argument("sale_id")
    args = p.parse_args(argv)
    names = ("FLASHSALE_REDIS_URL", "FLASHSALE_KEY_PREFIX", "FLASHSALE_DATABASE_URL")
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        p.error(f"set {', '.join(missing)}")
    print(remove_sale(os.environ[names[0]], os.environ[names[1]], os.environ[names[2]],
                      args.sale_id))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
