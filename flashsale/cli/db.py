"""``flashsale db migrate|status``: the database schema's migrations (see store/migrate.py).

``migrate`` creates the database if missing and applies the pending migrations, printing each;
it refuses to start when a shipped migration differs from the one the database applied. Exit
codes: 0 done (or nothing to do), 1 failed, 2 the database is at a newer schema than this
flashsale knows.

``status`` changes nothing: the version, what was applied and when, what is pending. Exit
codes: 0 up to date, 1 migrations pending (or the database cannot be reached), 2 the database
is at a newer schema than this flashsale knows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flashsale.settings import Settings
    from flashsale.store.migrate import Migration, SchemaStatus

log = logging.getLogger(__name__)

PROG = "flashsale db"


def add_db_parser(sub: Any) -> None:
    db = sub.add_parser("db", help="the database schema: apply migrations, show where it stands")
    dsub = db.add_subparsers(dest="db_command", required=True)

    migrate = dsub.add_parser("migrate", help="apply the pending migrations (creates the database)")
    migrate.set_defaults(func=cmd_migrate)

    status = dsub.add_parser("status", help="schema version, applied and pending migrations; "
                             "exit 0 up to date, 1 pending")  # fmt: skip
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=cmd_status)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from asyncpg import PostgresError

    from flashsale.store.database import ensure_database
    from flashsale.store.migrate import (
        SchemaError,
        load_migrations,
        migrate_database,
        migration_parameters,
    )

    def applied(migration: Migration, elapsed_s: float) -> None:
        kind = "" if migration.transactional else " (outside a transaction)"
        print(f"applied {migration.label}{kind} in {elapsed_s:.2f} s", flush=True)

    async def run() -> int:
        await ensure_database(settings.database_url)
        done = await migrate_database(
            settings.database_url,
            strict=True,
            on_applied=applied,
            parameters=migration_parameters(default_currency=settings.default_currency),
        )
        latest = load_migrations()[-1].version
        if done:
            print(f"database schema: {latest} (up to date)")
        else:
            print(f"nothing to apply: database schema {latest} is up to date")
        return 0

    try:
        return asyncio.run(run())
    except SchemaError as exc:
        print(f"{PROG} migrate: {exc}", file=sys.stderr)
        return exc.exit_code
    except (OSError, PostgresError) as exc:
        print(f"{PROG} migrate: the database failed: {exc!r}", file=sys.stderr)
        return 1


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import asyncpg

    from flashsale.store.migrate import SchemaStatus, SchemaTooNew, load_migrations, read_status

    async def run() -> tuple[SchemaStatus, bool]:
        try:
            conn = await asyncpg.connect(settings.database_url)
        except asyncpg.InvalidCatalogNameError:
            return SchemaStatus(load_migrations(), []), False
        try:
            return await read_status(conn), True
        finally:
            await conn.close()

    try:
        status, exists = asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"{PROG} status: the database failed: {exc!r}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status_json(status, exists), indent=2))
    else:
        print(render_status(status, exists))
    if status.too_new:
        print(f"{PROG} status: {SchemaTooNew(status.current, status.latest)}", file=sys.stderr)
        return 2
    return 1 if status.pending else 0


def status_json(status: SchemaStatus, exists: bool = True) -> dict[str, Any]:
    from flashsale import __version__

    changed = {a.version for a, _ in status.changed}
    known = {m.version for m in status.known}
    return {
        "database_exists": exists,
        "current_version": status.current,
        "latest_version": status.latest,
        "flashsale_version": __version__,
        "up_to_date": not status.pending and not status.too_new,
        "too_new": status.too_new,
        "earlier_tables": status.earlier_tables,
        "applied": [
            {
                "version": a.version,
                "name": a.name,
                "checksum": a.checksum,
                "applied_at": a.applied_at.isoformat(),
                "flashsale_version": a.flashsale_version,
                "known": a.version in known,
                "changed": a.version in changed,
            }
            for a in status.applied
        ],
        "pending": [
            {"version": m.version, "name": m.name, "transactional": m.transactional}
            for m in status.pending
        ],
    }


def render_status(status: SchemaStatus, exists: bool = True) -> str:
    from flashsale import __version__

    pending = status.pending
    if not exists:
        head = "database schema: none (the database does not exist yet)"
    elif status.too_new:
        head = f"database schema: {status.current}, newer than this flashsale knows"
    elif not status.applied:
        head = "database schema: none recorded" + (
            " (tables of an earlier flashsale: 0001 takes them over as they are)"
            if status.earlier_tables
            else ""
        )
    elif pending:
        head = f"database schema: {status.current} ({len(pending)} pending)"
    else:
        head = f"database schema: {status.current} (up to date)"
    lines = [head, f"flashsale {__version__} knows schema {status.latest}"]
    changed = {a.version for a, _ in status.changed}
    known = {m.version for m in status.known}
    if status.applied:
        lines.append("applied:")
        width = max(len(a.label) for a in status.applied)
        for a in status.applied:
            note = ""
            if a.version not in known:
                note = "  (unknown to this flashsale)"
            elif a.version in changed:
                note = "  CHANGED since applied: a shipped migration was edited"
            when = a.applied_at.isoformat(sep=" ", timespec="seconds")
            lines.append(f"  {a.label:<{width}}  {when}  by flashsale {a.flashsale_version}{note}")
    if pending:
        lines.append("pending:")
        for m in pending:
            kind = "" if m.transactional else "  (outside a transaction)"
            lines.append(f"  {m.label}{kind}")
    return "\n".join(lines)


def prepare_schema(settings: Settings) -> None:
    """Before ``serve`` starts its processes: migrate once here, and raise ``SchemaTooNew``
    when this flashsale must not run against the database (every worker would refuse, and be
    started again, for ever). A database that cannot be reached or migrated now is left to the
    workers, which retry as they start."""
    from asyncpg import PostgresError

    from flashsale.store.database import ensure_database
    from flashsale.store.migrate import MigrationFailed, migrate_database, migration_parameters

    async def run() -> None:
        await ensure_database(settings.database_url)
        await migrate_database(
            settings.database_url,
            parameters=migration_parameters(default_currency=settings.default_currency),
        )

    try:
        asyncio.run(run())
    except (OSError, PostgresError, MigrationFailed) as exc:
        log.warning("the database schema could not be prepared now (%s); the workers retry", exc)
