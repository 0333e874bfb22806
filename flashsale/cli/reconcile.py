"""``flashsale reconcile SALE_ID [--repair] [--json]``: compare a sale in Redis with PostgreSQL.

Prints what agrees and what differs; with ``--repair`` it repairs what can be repaired
idempotently, reads both stores again and reports what is left. Exit codes: 0 everything
agrees (after the repairs, with --repair), 1 something differs, 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from flashsale.cli.common import UsageError, run_job

if TYPE_CHECKING:
    import asyncpg

    from flashsale.engine.engine import Engine
    from flashsale.reconcile.checks import Report
    from flashsale.settings import Settings

PROG = "flashsale reconcile"


def add_reconcile_parser(sub: Any) -> None:
    rec = sub.add_parser("reconcile", help="compare a sale in Redis with PostgreSQL; repair")
    rec.add_argument("sale_id")
    rec.add_argument("--repair", action="store_true",
                     help="repair what can be repaired idempotently, then check again")  # fmt: skip
    rec.add_argument("--json", action="store_true", help="print the report as JSON")
    rec.set_defaults(func=cmd_reconcile)


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        report, repairs = await reconcile(pool, engine, args.sale_id, repair=args.repair)
        if args.json:
            print(json.dumps({**report.to_json(), "repairs": repairs}, indent=2))
        else:
            print(render(report, repairs))
        return 0 if report.clean else 1

    return run_job(settings, job, PROG)


async def reconcile(
    pool: asyncpg.Pool, engine: Engine, sale_id: str, *, repair: bool = False
) -> tuple[Report, list[str]]:
    """The report (after the repairs, with ``repair``) and the repairs made."""
    from flashsale.ids import SALE_ID_RE
    from flashsale.reconcile.checks import compare
    from flashsale.reconcile.repair import repair as apply_repairs
    from flashsale.reconcile.snapshot import read_postgres, read_redis

    if not SALE_ID_RE.fullmatch(sale_id):
        raise UsageError(f"not a sale id: {sale_id!r}")
    keys = engine.keys.sale(sale_id)

    async def check() -> tuple[Report, Any]:
        side = await read_redis(engine.redis, keys, sale_id)
        async with pool.acquire() as conn:
            pg = await read_postgres(conn, sale_id)
        return compare(sale_id, side, pg), side

    report, side = await check()
    if not side.sale and report.findings and report.findings[0].kind == "sale_missing":
        async with pool.acquire() as conn:
            known = await conn.fetchval("SELECT 1 FROM sales WHERE sale_id = $1", sale_id)
        if not known:
            raise UsageError(f"no sale {sale_id!r} in Redis or PostgreSQL")
    repairs: list[str] = []
    if repair and any(f.repairable for f in report.findings):
        async with pool.acquire() as conn:
            repairs = await apply_repairs(report, engine.redis, engine.scripts, keys, conn, side)
        report, _ = await check()
    return report, repairs


def render(report: Report, repairs: list[str]) -> str:
    lines = [f"reconcile {report.sale_id}:"]
    lines += [f"  ok       {line}" for line in report.checked]
    lines += [f"  skipped  {line}" for line in report.skipped]
    lines += [f"  repaired {line}" for line in repairs]
    for f in report.findings:
        tag = "DIFF" if not f.repairable else "DIFF (repairable with --repair)"
        sample = f"; e.g. {', '.join(f.items[:5])}" if f.items else ""
        lines.append(f"  {tag}: {f.kind}: {f.detail}{sample}")
    lines.append("verdict: Redis and PostgreSQL agree" if report.clean
                 else f"verdict: {len(report.findings)} difference(s)")  # fmt: skip
    return "\n".join(lines)
