"""Schema migrations: numbered SQL files, each applied once, in order, and recorded.

``flashsale/store/migrations/NNNN_<name>.sql`` are forward-only. A database records what it
has in ``schema_migrations`` (version, name, checksum of the file, when, and which flashsale
applied it). Every process applies the pending ones at start (``open_pool``), and
``flashsale db migrate`` does it on demand; either way one process at a time, under a
session-level advisory lock held for the whole run.

A migration runs in one transaction with its record, unless its first line is
``-- flashsale:no-transaction`` (``CREATE INDEX CONCURRENTLY`` cannot run in one). Such a file
is run one statement at a time and recorded at the end, so after a crash midway it is run again
from the top: every statement must be safe to repeat (``IF NOT EXISTS``, ``IF EXISTS``). An
index build that was interrupted leaves an INVALID index behind, which ``IF NOT EXISTS`` would
keep; so before each ``CREATE INDEX CONCURRENTLY`` an invalid index of that name is dropped.

The lock is taken by polling ``pg_try_advisory_lock``, never by waiting in
``pg_advisory_lock``: a process blocked in that statement holds a snapshot, which a
``CREATE INDEX CONCURRENTLY`` of the lock holder waits for, a deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

import asyncpg

from flashsale import __version__

log = logging.getLogger(__name__)

# Any constant will do: it only has to be the same in every flashsale process. It is the key
# flashsale has always serialized its schema step on, so releases before migrations wait too.
SCHEMA_LOCK_ID = 0x666C617368  # "flash"

NO_TRANSACTION_MARKER = "-- flashsale:no-transaction"

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Session parameters a migration may read with current_setting(name, true): custom ones only
_PARAMETER_NAME = re.compile(r"^flashsale\.[a-z_]+$")
_LOCK_POLL_MIN_S = 0.02
_LOCK_POLL_MAX_S = 0.5

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version           integer     PRIMARY KEY,
    name              text        NOT NULL,
    checksum          text        NOT NULL,
    applied_at        timestamptz NOT NULL DEFAULT now(),
    flashsale_version text        NOT NULL
)
"""

_RECORD = (
    "INSERT INTO schema_migrations (version, name, checksum, flashsale_version)"
    " VALUES ($1, $2, $3, $4)"
)


class SchemaError(Exception):
    """The database's schema cannot be brought to what this flashsale needs. ``exit_code`` is
    what a command ends with when it meets one."""

    exit_code = 1


class SchemaTooNew(SchemaError):
    """The database was migrated by a newer flashsale: refuse to run against it."""

    exit_code = 2

    def __init__(self, database_version: int, known_version: int) -> None:
        self.database_version = database_version
        self.known_version = known_version
        super().__init__(
            f"this database was migrated by a newer flashsale (schema {database_version}); "
            f"this flashsale knows schema {known_version}: upgrade it"
        )


class MigrationChanged(SchemaError):
    """A migration this database has applied differs from the file shipped under its number."""

    def __init__(self, changed: Sequence[tuple[AppliedMigration, Migration]]) -> None:
        self.changed = list(changed)
        names = ", ".join(
            f"{m.label} (applied {a.checksum[:12]}, shipped {m.checksum[:12]})" for a, m in changed
        )
        super().__init__(
            f"migrations changed since this database applied them: {names}; a shipped "
            "migration must never be edited (see README, Schema migrations)"
        )


class MigrationFailed(SchemaError):
    """A migration failed; what it did in its transaction was rolled back (a no-transaction
    one is run again from the top next time)."""

    def __init__(self, migration: Migration, cause: BaseException) -> None:
        self.migration = migration
        super().__init__(f"migration {migration.label} failed: {cause}")


class BadMigrations(SchemaError):
    """The shipped migration files are not a gapless 0001, 0002, ... sequence."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One shipped migration file."""

    version: int
    name: str  # the file name between the number and ".sql"
    sql: str
    checksum: str  # sha256 of the text (line endings normalized), hex
    transactional: bool

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    """One row of ``schema_migrations``."""

    version: int
    name: str
    checksum: str
    applied_at: datetime
    flashsale_version: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """What a database has applied against what this flashsale ships."""

    known: list[Migration]
    applied: list[AppliedMigration]
    earlier_tables: bool = False  # flashsale tables without a schema_migrations record

    @property
    def latest(self) -> int:
        """The newest version this flashsale knows."""
        return self.known[-1].version if self.known else 0

    @property
    def current(self) -> int:
        """The newest version the database has applied (0: none)."""
        return max((a.version for a in self.applied), default=0)

    @property
    def too_new(self) -> bool:
        return self.current > self.latest

    @property
    def pending(self) -> list[Migration]:
        done = {a.version for a in self.applied}
        return [m for m in self.known if m.version not in done]

    @property
    def changed(self) -> list[tuple[AppliedMigration, Migration]]:
        shipped = {m.version: m for m in self.known}
        return [
            (a, shipped[a.version])
            for a in self.applied
            if a.version in shipped and a.checksum != shipped[a.version].checksum
        ]


def checksum(text: str) -> str:
    return hashlib.sha256(text.replace("\r\n", "\n").encode("utf-8")).hexdigest()


def parse_migration(file_name: str, text: str) -> Migration:
    match = _FILE_NAME.match(file_name)
    if match is None:
        raise BadMigrations(f"{file_name}: a migration is named NNNN_<lowercase_name>.sql")
    first_line = text.lstrip("\ufeff").split("\n", 1)[0].strip()
    return Migration(
        version=int(match.group(1)),
        name=match.group(2),
        sql=text,
        checksum=checksum(text),
        transactional=first_line != NO_TRANSACTION_MARKER,
    )


def load_migrations(directory: Traversable | Path | None = None) -> list[Migration]:
    """The migrations in ``directory`` (by default the shipped ones), in order; they must be
    numbered 1, 2, 3, ... without gaps or repeats."""
    if directory is None:
        directory = resources.files("flashsale.store").joinpath("migrations")
    migrations = sorted(
        (
            parse_migration(entry.name, entry.read_text("utf-8"))
            for entry in directory.iterdir()
            if entry.name.endswith(".sql")
        ),
        key=lambda m: m.version,
    )
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise BadMigrations(
                f"migration {migration.label}: expected number {expected:04d} (numbers start "
                "at 0001 and have no gaps or repeats)"
            )
    return migrations


async def read_status(
    conn: asyncpg.Connection, migrations: Sequence[Migration] | None = None
) -> SchemaStatus:
    """Where the database stands; changes nothing."""
    known = list(load_migrations() if migrations is None else migrations)
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        earlier = await conn.fetchval("SELECT to_regclass('sales')") is not None
        return SchemaStatus(known, [], earlier_tables=earlier)
    rows = await conn.fetch(
        "SELECT version, name, checksum, applied_at, flashsale_version"
        " FROM schema_migrations ORDER BY version"
    )
    return SchemaStatus(known, [AppliedMigration(**dict(row)) for row in rows])


OnApplied = Callable[[Migration, float], None]


async def migrate(
    conn: asyncpg.Connection,
    migrations: Sequence[Migration] | None = None,
    *,
    strict: bool = False,
    on_applied: OnApplied | None = None,
    parameters: Mapping[str, str] | None = None,
) -> list[Migration]:
    """Apply the pending migrations, in order, holding the schema lock throughout (when nothing
    is pending, only a look without the lock); return what was applied. ``parameters``
    (``flashsale.<name>`` to value, see ``migration_parameters``) are set in the session
    before each migration, for the SQL to read with ``current_setting(name, true)``. Raises
    ``SchemaTooNew`` before changing anything when the database is ahead of this flashsale.
    A shipped migration
    that differs from what was applied is an error (``MigrationChanged``) when ``strict``,
    otherwise a logged warning. ``conn`` must not be in a transaction, and its session settings
    are its own (give it a connection of its own)."""
    known = list(load_migrations() if migrations is None else migrations)
    status = await read_status(conn, known)
    if status.applied and not status.pending:  # the usual start: no lock, workers start at once
        _check(status, strict)
        return []
    await _lock(conn)
    try:
        await conn.execute(_CREATE_TABLE)
        status = await read_status(conn, known)  # another process may have migrated meanwhile
        _check(status, strict)
        done: list[Migration] = []
        for migration in status.pending:
            started = time.monotonic()
            try:
                await _set_parameters(conn, parameters or {})
                if migration.transactional:
                    async with conn.transaction():
                        await conn.execute(migration.sql)
                        await _record(conn, migration)
                else:
                    await _apply_outside_transaction(conn, migration)
            except asyncpg.PostgresError as exc:
                raise MigrationFailed(migration, exc) from exc
            elapsed_s = time.monotonic() - started
            log.info("applied migration %s in %.2f s", migration.label, elapsed_s)
            done.append(migration)
            if on_applied is not None:
                on_applied(migration, elapsed_s)
        return done
    finally:
        await _unlock(conn)


def _check(status: SchemaStatus, strict: bool) -> None:
    if status.too_new:
        raise SchemaTooNew(status.current, status.latest)
    if not status.changed:
        return
    if strict:
        raise MigrationChanged(status.changed)
    for applied, shipped in status.changed:
        log.warning(
            "migration %s differs from the one this database applied (checksum %s, now %s): "
            "a shipped migration must never be edited",
            shipped.label, applied.checksum[:12], shipped.checksum[:12],
        )  # fmt: skip


async def migrate_database(
    url: str,
    migrations: Sequence[Migration] | None = None,
    *,
    strict: bool = False,
    on_applied: OnApplied | None = None,
    parameters: Mapping[str, str] | None = None,
) -> list[Migration]:
    """``migrate`` on a connection of its own to ``url`` (no statement timeout: an index build
    on a big table takes what it takes). The database must exist."""
    conn = await asyncpg.connect(url)
    try:
        return await migrate(
            conn, migrations, strict=strict, on_applied=on_applied, parameters=parameters
        )
    finally:
        await conn.close()


def migration_parameters(*, default_currency: str) -> dict[str, str]:
    """The session parameters the shipped migrations read, from the deployment's settings:
    ``flashsale.default_currency`` (0004 gives it to the sales made before currencies)."""
    return {"flashsale.default_currency": default_currency}


async def _set_parameters(conn: asyncpg.Connection, parameters: Mapping[str, str]) -> None:
    # set for the session, not the transaction, and again before each migration: a
    # no-transaction migration ends with RESET ALL
    for name, value in parameters.items():
        if not _PARAMETER_NAME.match(name):
            raise ValueError(f"migration parameter {name!r}: expected flashsale.<lowercase_name>")
        await conn.execute("SELECT set_config($1, $2, false)", name, value)


async def _record(conn: asyncpg.Connection, migration: Migration) -> None:
    await conn.execute(_RECORD, migration.version, migration.name, migration.checksum, __version__)


async def _apply_outside_transaction(conn: asyncpg.Connection, migration: Migration) -> None:
    for statement in split_statements(migration.sql):
        index = concurrent_index_name(statement)
        if index is not None:
            await _drop_if_invalid(conn, index)
        await conn.execute(statement)
    await _record(conn, migration)
    await conn.execute("RESET ALL")  # a SET of this migration ends with it


async def _drop_if_invalid(conn: asyncpg.Connection, index: str) -> None:
    invalid = await conn.fetchval(
        "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", index
    )
    if invalid:
        log.warning("dropping the invalid index %s an interrupted build left, to build it again",
                    index)  # fmt: skip
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")


async def _lock(conn: asyncpg.Connection) -> None:
    pause_s = _LOCK_POLL_MIN_S
    waiting_since: float | None = None
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SCHEMA_LOCK_ID):
        if waiting_since is None:
            waiting_since = time.monotonic()
            log.info("another process is migrating the database schema; waiting for it")
        await asyncio.sleep(pause_s)
        pause_s = min(pause_s * 2, _LOCK_POLL_MAX_S)
    if waiting_since is not None:
        log.info("schema lock taken after %.1f s", time.monotonic() - waiting_since)


async def _unlock(conn: asyncpg.Connection) -> None:
    if conn.is_closed():
        return  # the session, and its lock with it, are gone
    with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        await conn.execute("SELECT pg_advisory_unlock($1)", SCHEMA_LOCK_ID)


_CONCURRENT_INDEX = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"((?:\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*))",
    re.IGNORECASE,
)


def concurrent_index_name(statement: str) -> str | None:
    """The index a ``CREATE INDEX CONCURRENTLY`` statement builds, as written (quotes kept)."""
    match = _CONCURRENT_INDEX.match(statement)
    return match.group(1) if match else None


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def split_statements(sql: str) -> list[str]:
    """The statements of a SQL script, comments left out, each without its ``;``. Knows
    PostgreSQL's comments (``--``, nested ``/* */``), quoted strings and identifiers
    (``'...'``, ``E'...'``, ``"..."``) and dollar quotes (``$$ ... $$``, ``$tag$ ... $tag$``)."""
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            current.append(" ")
            continue
        if sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            current.append(" ")
            continue
        if c in "'\"":
            escapes = c == "'" and i > 0 and sql[i - 1] in "eE" and not _word_before(sql, i - 1)
            j = i + 1
            while j < n:
                if escapes and sql[j] == "\\":
                    j += 2
                elif sql[j] == c:
                    if sql.startswith(c, j + 1):
                        j += 2  # doubled quote
                    else:
                        break
                else:
                    j += 1
            current.append(sql[i : j + 1])
            i = j + 1
            continue
        if c == "$" and not _word_before(sql, i):
            tag = _DOLLAR_TAG.match(sql, i)
            if tag is not None:
                end = sql.find(tag.group(0), tag.end())
                j = n if end < 0 else end + len(tag.group(0))
                current.append(sql[i:j])
                i = j
                continue
        if c == ";":
            _flush(current, statements)
            i += 1
            continue
        current.append(c)
        i += 1
    _flush(current, statements)
    return statements


def _word_before(sql: str, i: int) -> bool:
    """Whether ``sql[i]`` continues an identifier or number (then ``$`` or ``E`` is part of
    it, not the start of a quote)."""
    return i > 0 and (sql[i - 1].isalnum() or sql[i - 1] in "_$")


def _flush(current: list[str], statements: list[str]) -> None:
    statement = "".join(current).strip()
    if statement:
        statements.append(statement)
    current.clear()
