"""Connecting to PostgreSQL: create the database when missing, apply the schema, open a pool."""

from __future__ import annotations

import logging
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)

# Any constant will do: it only has to be the same in every flashsale process.
_SCHEMA_LOCK_ID = 0x666C617368  # "flash"


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if it does not exist (needs CREATEDB)."""
    try:
        conn = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        name = urlsplit(url).path.lstrip("/")
        admin = await asyncpg.connect(_with_database(url, "postgres"))
        try:
            ident = '"' + name.replace('"', '""') + '"'
            await admin.execute(f"CREATE DATABASE {ident}")
            log.info("created database %s", name)
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            pass  # another process won the race (caught in the catalog, the second error)
        finally:
            await admin.close()
    else:
        await conn.close()


async def apply_schema(conn: asyncpg.Connection) -> None:
    schema = resources.files("flashsale.store").joinpath("schema.sql").read_text("utf-8")
    async with conn.transaction():
        # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalog: serialize.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_ID)
        await conn.execute(schema)


async def open_pool(
    url: str, *, min_size: int = 1, max_size: int = 8, timeout_s: float | None = None
) -> asyncpg.Pool:
    """The database exists and has the schema when this returns. With ``timeout_s`` a query
    unanswered that long fails (a connection that went silent is not waited on for ever)."""
    await ensure_database(url)
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, command_timeout=timeout_s
    )
    async with pool.acquire() as conn:
        await apply_schema(conn)
    return pool
