"""``flashsale doctor``: is this machine, with this environment, ready to serve a sale?

Prints the checks ``serve`` makes at start (flashsale/checks.py: the secrets, Redis's eviction
policy and persistence), the versions (flashsale, Python, Redis, PostgreSQL, the key
libraries), the database schema (as ``flashsale db status``) and the clock skew between this
machine and Redis and PostgreSQL. Exit codes: 0 every check ok; 1 a check warns or fails (or a
store cannot be reached); 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
from importlib import metadata
from typing import TYPE_CHECKING, Any

from flashsale import __version__
from flashsale.checks import (
    FAIL,
    OK,
    WARN,
    Check,
    eviction_allowed,
    eviction_check,
    persistence_check,
    postgres_clock_skew_ms,
    redis_clock_skew_ms,
    redis_version,
    secrets_check,
    skew_check,
)

if TYPE_CHECKING:
    from flashsale.settings import Settings

LIBRARIES = ("aiohttp", "redis", "hiredis", "asyncpg", "orjson", "uvloop", "PyJWT", "rich")


def add_doctor_parser(sub: Any) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="check Redis, PostgreSQL, the schema, the clocks and the secrets before a sale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.set_defaults(func=cmd_doctor)


def _library_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


async def examine(settings: Settings) -> dict[str, Any]:
    """Everything ``doctor`` reports, as one JSON-ready dict."""
    checks: list[Check] = [secrets_check()]
    versions: dict[str, Any] = {
        "flashsale": __version__,
        "python": platform.python_version(),
        "redis_server": None,
        "postgresql_server": None,
        **_library_versions(),
    }
    skew: dict[str, float | None] = {"redis_ms": None, "postgresql_ms": None}
    schema: dict[str, Any] | None = None
    checks += await _redis(settings, versions, skew)
    found, schema = await _postgres(settings, versions, skew)
    checks += found
    return {
        "ok": all(c.outcome == OK for c in checks),
        "checks": [c.to_json() for c in checks],
        "versions": versions,
        "schema": schema,
        "clock_skew": skew,
    }


async def _redis(
    settings: Settings, versions: dict[str, Any], skew: dict[str, float | None]
) -> list[Check]:
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    redis = Redis.from_url(settings.redis_url, decode_responses=True,
                           socket_connect_timeout=3, socket_timeout=5)  # fmt: skip
    try:
        version = versions["redis_server"] = await redis_version(redis)
        skew["redis_ms"] = offset = round(await redis_clock_skew_ms(redis), 1)
        return [
            Check("redis", OK, f"{_safe_url(settings.redis_url)}, Redis {version}"),
            await eviction_check(redis, allow=eviction_allowed()),
            await persistence_check(redis, settings.confirm_mode),
            skew_check("redis clock", offset),
        ]
    except (RedisError, OSError) as exc:
        return [Check("redis", FAIL, f"{_safe_url(settings.redis_url)} cannot be reached: {exc}")]
    finally:
        await redis.aclose()


async def _postgres(
    settings: Settings, versions: dict[str, Any], skew: dict[str, float | None]
) -> tuple[list[Check], dict[str, Any] | None]:
    import asyncpg

    from flashsale.cli.db import status_json
    from flashsale.store.migrate import read_status

    where = _safe_url(settings.database_url)
    try:
        conn = await asyncpg.connect(settings.database_url, timeout=5)
    except asyncpg.InvalidCatalogNameError:
        return [Check("postgresql", WARN, f"{where}: the database does not exist yet "
                      "(`flashsale db migrate` or `serve` creates it)")], None  # fmt: skip
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return [Check("postgresql", FAIL, f"{where} cannot be reached: {exc}")], None
    try:
        versions["postgresql_server"] = await conn.fetchval("SHOW server_version")
        skew["postgresql_ms"] = offset = round(await postgres_clock_skew_ms(conn), 1)
        status = await read_status(conn)
    except (OSError, asyncpg.PostgresError) as exc:
        return [Check("postgresql", FAIL, f"{where}: {exc}")], None
    finally:
        await conn.close()
    checks = [
        Check("postgresql", OK, f"{where}, PostgreSQL {versions['postgresql_server']}"),
        skew_check("postgresql clock", offset),
    ]
    if status.too_new:
        schema = Check("schema", FAIL, f"schema {status.current} is newer than this flashsale "
                       f"knows ({status.latest}): upgrade flashsale")  # fmt: skip
    elif status.pending:
        schema = Check(
            "schema",
            WARN,
            f"schema {status.current}, {len(status.pending)} "
            "migration(s) pending: `flashsale db migrate` (serve applies them too)",
        )
    elif status.changed:
        schema = Check("schema", WARN, f"schema {status.current}, but a shipped migration was "
                       "edited after it was applied: `flashsale db status`")  # fmt: skip
    else:
        schema = Check("schema", OK, f"schema {status.current} (up to date)")
    return [*checks, schema], status_json(status)


def _safe_url(url: str) -> str:
    """A store's URL without its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


_MARK = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL"}


def render(report: dict[str, Any]) -> str:
    lines = ["checks:"]
    for check in report["checks"]:
        lines.append(f"  {_MARK[check['outcome']]}  {check['name']}: {check['detail']}")
    lines.append("versions:")
    for name, version in report["versions"].items():
        lines.append(f"  {name:<18} {version or '-'}")
    skew = report["clock_skew"]
    lines.append("clock skew (theirs - ours):")
    for name, key in (("redis", "redis_ms"), ("postgresql", "postgresql_ms")):
        value = skew[key]
        lines.append(f"  {name:<18} {'-' if value is None else f'{value:+.1f} ms'}")
    lines.append("all good" if report["ok"] else "something needs looking at (see above)")
    return "\n".join(lines)


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    report = asyncio.run(examine(settings))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    sys.stdout.flush()
    return 0 if report["ok"] else 1
