"""Schema migrations: applied once each, in order, under a lock; an upgrade from flashsale 0.1.0
keeps every row; a newer schema is refused; `flashsale db migrate|status`; a no-transaction
migration is safe to run again after a crash midway.

Every test makes databases of its own on the test server, dropped afterwards."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from flashsale import __version__
from flashsale.settings import Settings
from flashsale.store.database import open_pool
from flashsale.store.migrate import (
    NO_TRANSACTION_MARKER,
    BadMigrations,
    MigrationFailed,
    SchemaTooNew,
    load_migrations,
    migrate_database,
    migration_parameters,
    split_statements,
)
from tests.conftest import ServiceFactory
from tests.helpers import run_flashsale

FIXTURES = Path(__file__).parent / "fixtures"
SHIPPED = load_migrations()
LATEST = SHIPPED[-1].version
LABELS = [m.label for m in SHIPPED]

NewDatabase = Callable[..., Awaitable[str]]


def _url(server: str, name: str) -> str:
    return urlunsplit(urlsplit(server)._replace(path="/" + name))


@pytest.fixture
async def new_database(database_url: str) -> AsyncIterator[NewDatabase]:
    """Make databases (``create=False``: only name one, for a process to create) on the test
    server; all dropped at the end."""
    admin_url = _url(database_url, "postgres")
    names: list[str] = []

    async def make(*, create: bool = True) -> str:
        name = f"flashsale_test_{uuid.uuid4().hex[:12]}"
        names.append(name)
        if create:
            conn = await asyncpg.connect(admin_url)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()
        return _url(database_url, name)

    yield make
    conn = await asyncpg.connect(admin_url)
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def execute(url: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def fetch(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def schema_of(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every column, constraint and index of the database's schema, comparable."""
    return {
        "columns": await fetch(
            url,
            "SELECT table_name, column_name, data_type, is_nullable, column_default"
            " FROM information_schema.columns WHERE table_schema = current_schema()"
            " ORDER BY 1, 2",
        ),
        "constraints": await fetch(
            url,
            "SELECT conrelid::regclass::text AS rel, conname, pg_get_constraintdef(oid) AS def,"
            " convalidated FROM pg_constraint"
            " WHERE connamespace = current_schema()::regnamespace ORDER BY 1, 2",
        ),
        "indexes": await fetch(
            url,
            "SELECT tablename, indexname, indexdef FROM pg_indexes"
            " WHERE schemaname = current_schema() ORDER BY 1, 2",
        ),
    }


async def applied_versions(url: str) -> list[int]:
    rows = await fetch(url, "SELECT version FROM schema_migrations ORDER BY version")
    return [r["version"] for r in rows]


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir()
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


# --- the shipped files ---------------------------------------------------------------------


def test_shipped_migrations_are_numbered_and_say_what_they_lock() -> None:
    assert [m.version for m in SHIPPED] == list(range(1, len(SHIPPED) + 1))
    for m in SHIPPED:
        lines = m.sql.splitlines()
        header = []
        for line in lines[1 if not m.transactional else 0 :]:
            if not line.startswith("--"):
                break
            header.append(line)
        text = "\n".join(header)
        assert text.startswith(f"-- {m.version:04d}: "), f"{m.label}: header says what it does"
        assert "\n-- Locks: " in text, f"{m.label}: header says what it locks"
        assert "\n-- Transaction: " in text, f"{m.label}: header says whether in a transaction"
        if not m.transactional:
            assert lines[0] == NO_TRANSACTION_MARKER


def test_0001_is_the_schema_of_0_1_0() -> None:
    frozen = (FIXTURES / "schema_v0_1_0.sql").read_text()
    assert split_statements(SHIPPED[0].sql) == split_statements(frozen)


def test_numbers_without_gaps(tmp_path: Path) -> None:
    gap = write_migrations(tmp_path / "m", {"0001_a.sql": "SELECT 1;", "0003_c.sql": "SELECT 1;"})
    with pytest.raises(BadMigrations, match="0003_c: expected number 0002"):
        load_migrations(gap)
    bad = write_migrations(tmp_path / "n", {"1_a.sql": "SELECT 1;"})
    with pytest.raises(BadMigrations, match="NNNN_"):
        load_migrations(bad)


def test_split_statements_knows_quotes_comments_and_dollar_quotes() -> None:
    sql = """-- a comment; not a statement
    CREATE INDEX CONCURRENTLY IF NOT EXISTS "odd;name" ON t (x); /* a ; /* nested ; */ ; */
    DO $$ BEGIN PERFORM 1; END $$;
    SELECT 'a;''b', E'c\\';d', $tag$ ; $tag$, "e;""f";
    SELECT 1"""
    assert split_statements(sql) == [
        'CREATE INDEX CONCURRENTLY IF NOT EXISTS "odd;name" ON t (x)',
        "DO $$ BEGIN PERFORM 1; END $$",
        "SELECT 'a;''b', E'c\\';d', $tag$ ; $tag$, \"e;\"\"f\"",
        "SELECT 1",
    ]


# --- (1) an empty database -----------------------------------------------------------------


async def test_every_migration_applies_on_an_empty_database_and_again_changes_nothing(
    new_database: NewDatabase,
) -> None:
    url = await new_database()
    applied = await migrate_database(url)
    assert [m.label for m in applied] == LABELS
    rows = await fetch(url, "SELECT * FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
        (m.version, m.name, m.checksum) for m in SHIPPED
    ]
    assert {r["flashsale_version"] for r in rows} == {__version__}
    schema = await schema_of(url)
    fcode_rule = [c for c in schema["constraints"] if c["conname"] == "orders_fcode_one_unit"]
    assert fcode_rule == [
        {
            "rel": "orders",
            "conname": "orders_fcode_one_unit",
            "def": "CHECK (((fcode IS NULL) OR (quantity = 1)))",
            "convalidated": True,
        }
    ]

    assert await migrate_database(url) == []
    pool = await open_pool(url, max_size=1)  # the way every process starts
    await pool.close()
    assert await fetch(url, "SELECT * FROM schema_migrations ORDER BY version") == rows
    assert await schema_of(url) == schema


# --- (2) upgrades from databases of earlier flashsale releases -----------------------------

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


async def fill_0_1_0(url: str) -> None:
    """Sales, orders, F-codes and bookings as flashsale 0.1.0 stored them."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.executemany(
                "INSERT INTO sales (sale_id, sku, name, price_cents, stock, per_user_limit,"
                " starts_at, ends_at, reservation_ttl_s, state, fcode_stock, fcode_opens_at,"
                " booking_opens_at, booking_closes_at, booking_required, admission,"
                " bookings_stored, rate_per_user, burst_per_user)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,"
                " $16, $17, $18, $19)",
                [
                    ("plain", "mi-1", "Mi 1", 199_900, 10, 2, T0, T0 + timedelta(hours=1),
                     900, "closed", 0, None, None, None, False, None, 0, 10.0, 20),
                    ("fcoded", "mi-2", "Mi 2", 299_900, 20, 1, T0, T0 + timedelta(hours=1),
                     600, "active", 5, T0 - timedelta(hours=1), None, None, False, None, 0,
                     5.0, 10),
                    ("booked", "mi-3", "Mi 3", 99_900, 100, 1, T0, T0 + timedelta(hours=2),
                     300, "paused", 0, None, T0 - timedelta(days=2), T0 - timedelta(hours=1),
                     True, "booking_order", 3, 10.0, 20),
                ],
            )  # fmt: skip
            orders = [
                ("plain.0a", "plain", "u1", 2, "paid", 2, None, None),
                ("plain.0b", "plain", "u2", 1, "expired", 2, None, None),
                ("plain.0c", "plain", "u3", 1, "cancelled", 2, None, None),
                ("plain.0d", "plain", "u4", 1, "reserved", 1, None, None),
                ("fcoded.0a", "fcoded", "u5", 1, "paid", 2, "digest-1", "vip"),
                ("fcoded.0b", "fcoded", "u6", 1, "reserved", 1, None, None),
                ("booked.0a", "booked", "u7", 1, "paid", 2, None, None),
            ]
            await conn.executemany(
                "INSERT INTO orders (order_id, sale_id, user_id, quantity, status, version,"
                " expires_at, created_at, updated_at, fcode, campaign)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                [
                    (o, s, u, q, st, v, T0 + timedelta(minutes=15 + i), T0 + timedelta(minutes=i),
                     T0 + timedelta(minutes=i + 1), f, c)
                    for i, (o, s, u, q, st, v, f, c) in enumerate(orders)
                ],
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO fcode_campaigns (sale_id, campaign, issued, created_at, loaded_at)"
                " VALUES ('fcoded', 'vip', 3, $1, $1)",
                T0 - timedelta(days=1),
            )
            await conn.executemany(
                "INSERT INTO fcodes (digest, sale_id, campaign, bound_user, state, order_id,"
                " redeemed_by, issued_at, redeemed_at, revoked_at, state_ms)"
                " VALUES ($1, 'fcoded', 'vip', $2, $3, $4, $5, $6, $7, $8, $9)",
                [
                    ("digest-1", "u5", "redeemed", "fcoded.0a", "u5", T0, T0, None, 1_000),
                    ("digest-2", None, "issued", None, None, T0, None, None, 0),
                    ("digest-3", "u9", "revoked", None, None, T0, None, T0, 0),
                ],
            )  # fmt: skip
            await conn.executemany(
                "INSERT INTO bookings (sale_id, booking_no, user_id, booked_at, source)"
                " VALUES ('booked', $1, $2, $3, $4)",
                [
                    (1, "u7", T0 - timedelta(days=1), "web"),
                    (2, "u8", T0 - timedelta(days=1, minutes=-1), "import"),
                    (3, "u9", T0 - timedelta(hours=5), "web"),
                ],
            )  # fmt: skip
    finally:
        await conn.close()


TABLES = {
    "sales": "sale_id",
    "orders": "order_id",
    "fcode_campaigns": "sale_id, campaign",
    "fcodes": "digest",
    "bookings": "sale_id, booking_no",
}


async def contents(url: str) -> dict[str, list[dict[str, Any]]]:
    return {t: await fetch(url, f"SELECT * FROM {t} ORDER BY {k}") for t, k in TABLES.items()}


async def test_a_0_1_0_database_upgrades_keeping_every_row_and_serves(
    new_database: NewDatabase, make_service: ServiceFactory
) -> None:
    url = await new_database()
    await execute(url, (FIXTURES / "schema_v0_1_0.sql").read_text())
    await fill_0_1_0(url)
    before = await contents(url)
    assert {t: len(rows) for t, rows in before.items()} == {
        "sales": 3, "orders": 7, "fcode_campaigns": 1, "fcodes": 3, "bookings": 3,
    }  # fmt: skip

    pool = await open_pool(url, max_size=1)  # a process of this release starts on it
    await pool.close()
    assert await applied_versions(url) == list(range(1, LATEST + 1))
    # every row kept as it was; the sales gained the default currency (0004), and no opening
    # window or F-code release (0007)
    no_window = {"opening_window_ms": None, "opening_seed": None, "fcode_release_at": None}
    before["sales"] = [sale | {"currency": "USD"} | no_window for sale in before["sales"]]
    assert await contents(url) == before
    fresh = await new_database()
    await migrate_database(fresh)
    assert await schema_of(url) == await schema_of(fresh)

    service = await make_service(database_url=url)
    sale = await service.create_sale(stock=3)
    reply = await service.buy(sale["sale_id"], "shopper-1")
    assert reply.status == 201, reply.body
    await service.wait_for_postgres(sale["sale_id"])
    after = await contents(url)
    new_orders = [o for o in after["orders"] if o["sale_id"] == sale["sale_id"]]
    assert [o["order_id"] for o in new_orders] == [reply.body["order"]["order_id"]]
    assert [o for o in after["orders"] if o["sale_id"] != sale["sale_id"]] == before["orders"]
    assert [s for s in after["sales"] if s["sale_id"] != sale["sale_id"]] == before["sales"]


async def test_an_older_database_gains_the_columns_and_the_kept_booking_counts(
    new_database: NewDatabase,
) -> None:
    """A database from before sales.bookings_stored and the rate limits: 0001 adds them, and
    counts the bookings already there."""
    url = await new_database()
    await execute(url, (FIXTURES / "schema_before_kept_booking_counts.sql").read_text())
    await execute(
        url,
        "INSERT INTO sales (sale_id, sku, name, price_cents, stock, per_user_limit, starts_at,"
        " ends_at, reservation_ttl_s) VALUES ('a', 's', 'A', 100, 5, 1, $1, $2, 60),"
        " ('b', 's', 'B', 100, 5, 1, $1, $2, 60)",
        T0,
        T0 + timedelta(hours=1),
    )
    await execute(
        url,
        "INSERT INTO bookings (sale_id, booking_no, user_id, booked_at, source)"
        " SELECT 'a', n, 'u' || n, $1, 'web' FROM generate_series(1, 4) n",
        T0,
    )
    await migrate_database(url)
    rows = await fetch(
        url, "SELECT sale_id, bookings_stored, rate_per_user FROM sales ORDER BY sale_id"
    )
    assert rows == [
        {"sale_id": "a", "bookings_stored": 4, "rate_per_user": 10.0},
        {"sale_id": "b", "bookings_stored": 0, "rate_per_user": 10.0},
    ]
    fresh = await new_database()
    await migrate_database(fresh)
    assert await schema_of(url) == await schema_of(fresh)


# --- (3) concurrent starts -----------------------------------------------------------------


async def test_concurrent_starts_apply_each_migration_once(
    new_database: NewDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    url = await new_database(create=False)  # not even the database exists yet
    caplog.set_level(logging.INFO, logger="flashsale.store.migrate")
    pools = await asyncio.gather(*(open_pool(url, max_size=1) for _ in range(6)))
    for pool in pools:
        await pool.close()
    applied = [r.getMessage().split()[2] for r in caplog.records if "applied migration" in r.msg]
    assert applied == LABELS  # each once, in order, whoever applied it
    assert await applied_versions(url) == list(range(1, LATEST + 1))


async def test_a_concurrent_index_build_does_not_deadlock_with_processes_waiting_to_migrate(
    new_database: NewDatabase, tmp_path: Path
) -> None:
    """CREATE INDEX CONCURRENTLY waits for every transaction older than it, and a process
    blocked in pg_advisory_lock is in one: those waiting for the lock poll instead."""
    migrations = load_migrations(
        write_migrations(
            tmp_path / "m",
            {
                "0001_t.sql": "CREATE TABLE t (x int);"
                " INSERT INTO t SELECT g FROM generate_series(1, 1000) g;",
                "0002_t_x.sql": f"{NO_TRANSACTION_MARKER}\nSELECT pg_sleep(0.5);\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);\n",
            },
        )
    )
    url = await new_database()
    await migrate_database(url, migrations[:1])
    first = asyncio.create_task(migrate_database(url, migrations))
    watch = await asyncpg.connect(url)
    try:
        for _ in range(1000):  # until the first holds the lock, in its pg_sleep
            if await watch.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'SELECT pg_sleep%'"
            ):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the first migration never started")
        others = [asyncio.create_task(migrate_database(url, migrations)) for _ in range(3)]
        results = await asyncio.wait_for(asyncio.gather(first, *others), timeout=30)
        assert [[m.label for m in r] for r in results] == [["0002_t_x"], [], [], []]
        assert await watch.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_x'::regclass"
        )
    finally:
        await watch.close()


# --- (4) a database newer than this flashsale ----------------------------------------------


async def test_a_database_migrated_by_a_newer_flashsale_is_refused(
    new_database: NewDatabase, settings: Settings
) -> None:
    url = await new_database()
    await migrate_database(url)
    await execute(
        url,
        "INSERT INTO schema_migrations (version, name, checksum, flashsale_version)"
        " VALUES (999, 'from_the_future', 'x', '9.0.0')",
    )
    message = (
        "this database was migrated by a newer flashsale (schema 999); "
        f"this flashsale knows schema {LATEST}: upgrade it"
    )
    with pytest.raises(SchemaTooNew) as refused:
        await open_pool(url)
    assert str(refused.value) == message
    # with one of its own migrations missing too: still refused, and nothing applied
    await execute(url, "DELETE FROM schema_migrations WHERE version = $1", LATEST)
    with pytest.raises(SchemaTooNew, match="schema 999"):
        await open_pool(url)
    assert await applied_versions(url) == [*range(1, LATEST), 999]

    mine = replace(settings, database_url=url)
    for args in (["writer"], ["serve", "--port", "0"], ["db", "migrate"], ["db", "status"]):
        code, _, err = await run_flashsale(mine, *args)
        assert code == 2, (args, err)
        assert message in err, args
    assert await applied_versions(url) == [*range(1, LATEST), 999]


# --- (5) flashsale db status | migrate -----------------------------------------------------


async def test_db_status_and_migrate(
    new_database: NewDatabase, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    url = await new_database(create=False)
    mine = replace(settings, database_url=url)

    code, out, _ = await run_flashsale(mine, "db", "status")
    assert code == 1
    assert "database schema: none (the database does not exist yet)" in out
    pending = out.split("pending:\n")[1].splitlines()
    assert [line.split()[0] for line in pending] == LABELS
    # 0008 builds its indexes CONCURRENTLY, and status says so
    assert [line.endswith("(outside a transaction)") for line in pending] == [
        not m.transactional for m in SHIPPED
    ]

    code, out, err = await run_flashsale(mine, "db", "migrate")
    assert code == 0, err
    assert [line.split()[1] for line in out.splitlines() if line.startswith("applied ")] == LABELS
    assert f"database schema: {LATEST} (up to date)" in out

    code, out, err = await run_flashsale(mine, "db", "migrate")
    assert (code, out.strip()) == (0, f"nothing to apply: database schema {LATEST} is up to date")

    code, out, _ = await run_flashsale(mine, "db", "status")
    assert code == 0
    assert out.startswith(f"database schema: {LATEST} (up to date)\n")
    assert f"flashsale {__version__} knows schema {LATEST}" in out
    applied_lines = out.split("applied:\n")[1].splitlines()
    assert [line.split()[0] for line in applied_lines] == LABELS
    assert all(line.endswith(f"by flashsale {__version__}") for line in applied_lines)

    # one migration pending
    await execute(url, "DELETE FROM schema_migrations WHERE version = $1", LATEST)
    code, out, _ = await run_flashsale(mine, "db", "status", "--json")
    assert code == 1
    status = json.loads(out)
    assert status["current_version"] == LATEST - 1
    assert status["latest_version"] == LATEST
    assert status["up_to_date"] is False
    assert [a["version"] for a in status["applied"]] == list(range(1, LATEST))
    assert all(datetime.fromisoformat(a["applied_at"]) for a in status["applied"])
    assert status["pending"] == [
        {"version": LATEST, "name": SHIPPED[-1].name, "transactional": SHIPPED[-1].transactional}
    ]
    code, out, err = await run_flashsale(mine, "db", "migrate")
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"applied {LABELS[-1]} ")
    assert " in " in out.splitlines()[0]

    # a shipped migration edited after it was applied
    await execute(url, "UPDATE schema_migrations SET checksum = 'e' || checksum WHERE version = 1")
    code, out, err = await run_flashsale(mine, "db", "migrate")
    assert code == 1
    assert f"{LABELS[0]} (applied e" in err
    assert "a shipped migration must never be edited" in err
    code, out, _ = await run_flashsale(mine, "db", "status")
    assert code == 0
    assert "CHANGED since applied" in out
    caplog.set_level(logging.WARNING, logger="flashsale.store.migrate")
    pool = await open_pool(url, max_size=1)  # a process still starts, with a warning
    await pool.close()
    assert any(LABELS[0] in r.getMessage() for r in caplog.records)


# --- (6) a no-transaction migration after a crash midway ------------------------------------


async def test_a_no_transaction_migration_runs_again_after_a_crash(
    new_database: NewDatabase, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    migrations = load_migrations(
        write_migrations(
            tmp_path / "m",
            {
                "0001_t.sql": "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (1), (2);",
                "0002_t_unique.sql": f"{NO_TRANSACTION_MARKER}\n-- 0002: t.x is unique\n"
                "ALTER TABLE t ADD COLUMN IF NOT EXISTS y int;\n"
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);\n",
            },
        )
    )
    assert [m.transactional for m in migrations] == [True, False]
    url = await new_database()

    async def index_valid() -> bool | None:
        rows = await fetch(
            url, "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('t_x')"
        )
        return rows[0]["indisvalid"] if rows else None

    # the build fails midway (a duplicate): an INVALID index is left, nothing is recorded
    with pytest.raises(MigrationFailed, match="0002_t_unique failed"):
        await migrate_database(url, migrations)
    assert await index_valid() is False
    assert await applied_versions(url) == [1]
    # IF NOT EXISTS alone would keep the broken index for ever
    await execute(url, "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x)")
    assert await index_valid() is False

    # once the cause is gone, running it again from the top drops the invalid index, rebuilds
    await execute(url, "DELETE FROM t WHERE ctid = (SELECT max(ctid) FROM t WHERE x = 1)")
    caplog.set_level(logging.WARNING, logger="flashsale.store.migrate")
    assert [m.label for m in await migrate_database(url, migrations)] == ["0002_t_unique"]
    assert await index_valid() is True
    assert await applied_versions(url) == [1, 2]
    assert any("invalid index t_x" in r.getMessage() for r in caplog.records)
    assert await migrate_database(url, migrations) == []


async def test_sales_made_before_currencies_get_the_deployments_default_currency(
    new_database: NewDatabase,
) -> None:
    """0004 is given FLASHSALE_DEFAULT_CURRENCY as a session parameter: the sales already there
    get it, and it stays the column's default (a sale a process of the previous release makes
    meanwhile gets it too); without one, USD; a code that is none fails and changes nothing."""
    before_currencies = [m for m in SHIPPED if m.version < 4]
    insert_sale = (
        "INSERT INTO sales (sale_id, sku, name, price_cents, stock, per_user_limit, starts_at,"
        " ends_at, reservation_ttl_s) VALUES ($1, 's', 'S', 100, 5, 1, $2, $3, 60)"
    )
    url = await new_database()
    await migrate_database(url, before_currencies)
    for sale_id in ("a", "b"):
        await execute(url, insert_sale, sale_id, T0, T0 + timedelta(hours=1))
    with pytest.raises(MigrationFailed, match="ISO 4217"):
        await migrate_database(url, parameters=migration_parameters(default_currency="euro"))
    assert await applied_versions(url) == [1, 2, 3]
    await migrate_database(url, parameters=migration_parameters(default_currency="EUR"))
    await execute(url, insert_sale, "c", T0, T0 + timedelta(hours=1))
    rows = await fetch(url, "SELECT sale_id, currency FROM sales ORDER BY sale_id")
    assert rows == [{"sale_id": s, "currency": "EUR"} for s in ("a", "b", "c")]
    with pytest.raises(asyncpg.CheckViolationError):
        await execute(url, "UPDATE sales SET currency = 'eur'")

    plain = await new_database()
    await migrate_database(plain, before_currencies)
    await execute(plain, insert_sale, "a", T0, T0 + timedelta(hours=1))
    await migrate_database(plain)
    assert await fetch(plain, "SELECT currency FROM sales") == [{"currency": "USD"}]


async def test_0008_keeps_the_outbox_rows_and_their_dedupe_with_fewer_indexes(
    new_database: NewDatabase,
) -> None:
    """0008 swaps outbox's created_at btree for a BRIN index and keeps event_id unique only
    where (order_id, sequence) cannot tell events apart: payments naming no order (sequence
    NULL). The rows stay; an order event or such a payment's event recorded again is still
    stored once; two payments for one unknown order are two events."""
    before = [m for m in SHIPPED if m.version < 8]
    url = await new_database()
    await migrate_database(url, before)
    insert = (
        "INSERT INTO outbox (event_id, order_id, sale_id, sequence, type, payload)"
        " VALUES ($1, $2, NULL, $3, $4, '{}') ON CONFLICT DO NOTHING"
    )
    await execute(url, insert, "evt_a1", "o_a", 1, "order.reserved")
    await execute(url, insert, "evt_a2", "o_a", 2, "order.paid")
    await execute(url, insert, "evt_p1", "o_unknown", None, "payment.refund_required")
    columns = "id, event_id, order_id, sale_id, sequence, type, payload, created_at, txid"
    rows = await fetch(url, f"SELECT {columns} FROM outbox ORDER BY id")

    await migrate_database(url)
    assert await applied_versions(url) == list(range(1, LATEST + 1))
    assert await fetch(url, f"SELECT {columns} FROM outbox ORDER BY id") == rows
    indexes = {
        r["indexname"]: r["indexdef"]
        for r in await fetch(
            url, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'outbox'"
        )
    }
    assert sorted(indexes) == [
        "outbox_created_at_brin", "outbox_event_id_without_order", "outbox_order_id_sequence_key",
        "outbox_pkey", "outbox_txid_id",
    ]  # fmt: skip
    assert "USING brin (created_at)" in indexes["outbox_created_at_brin"]
    assert indexes["outbox_event_id_without_order"].endswith(
        "USING btree (event_id) WHERE (sequence IS NULL)"
    )
    fresh = await new_database()
    await migrate_database(fresh)
    assert await schema_of(url) == await schema_of(fresh)

    await execute(url, insert, "evt_a1", "o_a", 1, "order.reserved")  # a replay
    await execute(url, insert, "evt_p1", "o_unknown", None, "payment.refund_required")
    await execute(url, insert, "evt_p2", "o_unknown", None, "payment.refund_required")
    after = await fetch(url, "SELECT event_id FROM outbox ORDER BY id")
    assert [r["event_id"] for r in after] == ["evt_a1", "evt_a2", "evt_p1", "evt_p2"]
    with pytest.raises(asyncpg.UniqueViolationError):  # the pair alone keeps an order's apart
        await execute(url, insert.split(" ON CONFLICT")[0], "evt_other", "o_a", 2, "order.paid")

    # run again from the top (a crash before its record): nothing changes
    await execute(url, "DELETE FROM schema_migrations WHERE version = 8")
    assert [m.label for m in await migrate_database(url)] == [SHIPPED[7].label]
    assert await schema_of(url) == await schema_of(fresh)


async def test_0009_stores_events_as_text_and_keeps_the_jsonb_rows_readable(
    new_database: NewDatabase,
) -> None:
    """0009 adds the text column ``body`` that new events are stored in, and lets ``payload``
    (jsonb) be NULL. Rows written before keep their payload and are read as before (readers
    take ``coalesce(body, payload::text)``); a writer of the release before, still running
    during an upgrade, goes on inserting its jsonb payloads; a row must have exactly one."""
    before = [m for m in SHIPPED if m.version < 9]
    url = await new_database()
    await migrate_database(url, before)
    # as the writer of 0008 inserts: a jsonb payload, its columns read from it
    old_writer = """
        INSERT INTO outbox (event_id, order_id, sale_id, sequence, type, payload)
        SELECT e, p #>> '{data,order_id}', p #>> '{data,sale_id}',
               (p #>> '{data,sequence}')::int, p ->> 'type', p
        FROM unnest($1::text[], $2::jsonb[]) AS t(e, p)
        ON CONFLICT (order_id, sequence) DO NOTHING
    """
    event = '{"data": {"sale_id": "s", "order_id": "o_1", "sequence": %d}, "type": "order.%s"}'
    await execute(url, old_writer, ["evt_1"], [event % (1, "reserved")])
    await migrate_database(url)
    assert await applied_versions(url) == list(range(1, LATEST + 1))
    await execute(url, old_writer, ["evt_2"], [event % (2, "paid")])
    await execute(
        url,
        "INSERT INTO outbox (event_id, order_id, sale_id, sequence, type, body)"
        " VALUES ('evt_3', 'o_1', 's', 3, 'order.cancelled', $1)",
        '{"type":"order.cancelled"}',
    )
    read = await fetch(
        url,
        "SELECT event_id, order_id, sequence, type, coalesce(body, payload::text) AS text"
        " FROM outbox ORDER BY id",
    )
    assert [(r["event_id"], r["order_id"], r["sequence"], r["type"]) for r in read] == [
        ("evt_1", "o_1", 1, "order.reserved"), ("evt_2", "o_1", 2, "order.paid"),
        ("evt_3", "o_1", 3, "order.cancelled"),
    ]  # fmt: skip
    assert [json.loads(r["text"])["type"] for r in read] == [
        "order.reserved",
        "order.paid",
        "order.cancelled",
    ]
    assert read[2]["text"] == '{"type":"order.cancelled"}'  # the text as it was given
    for body, payload in ((None, None), ('{"a":1}', '{"a": 1}')):
        with pytest.raises(asyncpg.CheckViolationError):
            await execute(
                url,
                "INSERT INTO outbox (event_id, order_id, sequence, type, body, payload)"
                " VALUES ('evt_x', 'o_x', 1, 'order.reserved', $1, $2::jsonb)",
                body, payload,
            )  # fmt: skip
    fresh = await new_database()
    await migrate_database(fresh)
    assert await schema_of(url) == await schema_of(fresh)
