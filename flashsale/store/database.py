"""Connecting to PostgreSQL: create the database when missing, migrate its schema, open a pool."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from flashsale.store.migrate import migrate_database

log = logging.getLogger(__name__)


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


async def open_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 8,
    timeout_s: float | None = None,
    parameters: Mapping[str, str] | None = None,
) -> asyncpg.Pool:
    """The database exists and its schema is migrated to the newest this flashsale ships when
    this returns (see store/migrate.py). Raises ``SchemaTooNew`` when a newer flashsale has
    migrated it further: this one must not run against it. With ``timeout_s`` a query
    unanswered that long fails (a connection that went silent is not waited on for ever).
    ``parameters`` are the migrations' session parameters (``migration_parameters``)."""
    await ensure_database(url)
    await migrate_database(url, parameters=parameters)
    return await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, command_timeout=timeout_s
    )
