"""``flashsale fcodes``: issue, load, revoke, count and check F-codes.

Exit codes: 0 done, 1 failed, 2 a usage error (bad arguments, nothing was done).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flashsale.cli.common import Job, ProgressBar, UsageError, run_job

if TYPE_CHECKING:
    import asyncpg

    from flashsale.engine.engine import Engine
    from flashsale.settings import Settings

log = logging.getLogger(__name__)

CSV_HEADER = ("code", "user", "campaign", "sale_id")


def add_fcodes_parser(sub: Any) -> None:
    fc = sub.add_parser("fcodes", help="issue, load, revoke, count and check F-codes")
    fsub = fc.add_subparsers(dest="fcodes_command", required=True)

    issue = fsub.add_parser("issue", help="issue a campaign of codes into a CSV file")
    issue.add_argument("sale_id")
    issue.add_argument("--campaign", required=True, help="name, e.g. spring-vip (once per sale)")
    issue.add_argument("--count", type=int, help="number of codes (default: one per bound user)")
    issue.add_argument("--bind-users", metavar="FILE", help="one user id a line: a code each")
    issue.add_argument("--out", required=True, metavar="FILE.csv", help="never overwritten")
    issue.set_defaults(func=cmd_issue)

    load = fsub.add_parser("load", help="(re)load a campaign from PostgreSQL into Redis")
    load.add_argument("sale_id")
    load.add_argument("--campaign", required=True)
    load.set_defaults(func=cmd_load)

    revoke = fsub.add_parser("revoke", help="revoke codes, a file of codes or a campaign")
    revoke.add_argument("sale_id")
    what = revoke.add_mutually_exclusive_group(required=True)
    what.add_argument("--code", action="append", help="a code (repeatable)")
    what.add_argument("--file", help="a CSV written by issue, or one code a line")
    what.add_argument("--campaign")
    revoke.set_defaults(func=cmd_revoke)

    stats = fsub.add_parser("stats", help="codes per campaign of a sale")
    stats.add_argument("sale_id")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)

    check = fsub.add_parser("check", help="what is known about one code (for support)")
    check.add_argument("code")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check)


def _run(settings: Settings, job: Job) -> int:
    return run_job(settings, job, "flashsale fcodes")


def _read_users(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            users = [line.strip() for line in f]
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    users = [u for u in users if u]
    if not users:
        raise UsageError(f"{path} lists no users")
    return users


def _write_csv(path: Path, rows: list[tuple[str, str]], campaign: str, sale_id: str) -> None:
    started = time.perf_counter()
    # the codes are secrets: readable by their owner only, and never over an existing file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        writer.writerows((code, user, campaign, sale_id) for code, user in rows)
        f.flush()
        os.fsync(f.fileno())
    log.info("campaign %s: csv %s: %.2f s", campaign, path, time.perf_counter() - started)


def cmd_issue(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.fcodes import codes
    from flashsale.fcodes.issue import LoadIncomplete, check_campaign, issue_campaign

    out = Path(args.out)
    partial = out.with_name(out.name + ".partial")
    if out.exists():
        print(f"flashsale fcodes: {out} exists; it is never overwritten", file=sys.stderr)
        return 2
    if partial.exists():
        print(f"flashsale fcodes: {partial} exists: an earlier run was interrupted. Its codes "
              "may be issued (see `flashsale fcodes stats`); move it away first",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.count is None and args.bind_users is None:
        print("flashsale fcodes: give --count, --bind-users or both", file=sys.stderr)
        return 2
    key = settings.fcode_key
    bar = ProgressBar()
    written: list[str] = []  # the first code, once the partial file holds them all

    def on_generated(pairs: list[tuple[str, str]]) -> None:
        bar.close()
        _write_csv(partial, pairs, args.campaign, args.sale_id)
        written.append(pairs[0][0])

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        check_campaign(args.campaign)
        users = None if args.bind_users is None else _read_users(args.bind_users)
        started = time.perf_counter()
        try:
            pairs = await issue_campaign(
                pool, engine, key, args.sale_id, args.campaign, count=args.count,
                bind_users=users, progress=bar, on_generated=on_generated,
            )  # fmt: skip
        except LoadIncomplete:
            bar.close()
            _publish(partial, out)  # stored in PostgreSQL: the codes are real
            raise
        except BaseException:
            bar.close()
            if written and not await _stored(pool, codes.digest(key, written[0])):
                partial.unlink()
            elif written:
                print(f"flashsale fcodes: the codes were stored; they are in {partial}",
                      file=sys.stderr)  # fmt: skip
            raise
        bar.close()
        _publish(partial, out)
        elapsed = time.perf_counter() - started
        print(f"issued {len(pairs):,} codes of campaign {args.campaign} for sale "
              f"{args.sale_id} in {elapsed:.1f} s ({len(pairs) / elapsed:,.0f} codes/s): {out}",
              file=sys.stderr)  # fmt: skip
        return 0

    return _run(settings, job)


def _publish(partial: Path, out: Path) -> None:
    os.link(partial, out)  # unlike a rename, never replaces a file that appeared meanwhile
    partial.unlink()


async def _stored(pool: asyncpg.Pool, digest: str) -> bool:
    try:
        return bool(await pool.fetchval("SELECT 1 FROM fcodes WHERE digest = $1", digest))
    except Exception:
        return True  # cannot tell: keep the file


def cmd_load(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.fcodes.issue import check_campaign, load_campaign_from_postgres

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        check_campaign(args.campaign)
        bar = ProgressBar()
        added = await load_campaign_from_postgres(
            pool, engine, args.sale_id, args.campaign, progress=bar
        )
        bar.close()
        print(f"campaign {args.campaign} of sale {args.sale_id} loaded: {added:,} code(s) "
              "added to Redis, the others were there already")  # fmt: skip
        return 0

    return _run(settings, job)


def _codes_of_file(path: str, sale_id: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if lines and lines[0].strip().startswith("code,"):
        rows = list(csv.DictReader(lines))
        others = {r.get("sale_id") or "" for r in rows} - {sale_id, ""}
        if others:
            raise UsageError(f"{path} holds codes of sale(s) {', '.join(sorted(others))}")
        return [r["code"] or "" for r in rows]
    return [s for line in lines if (s := line.strip()) and not s.startswith("#")]


def cmd_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.fcodes import codes
    from flashsale.fcodes.admin_ops import revoke

    key = settings.fcode_key

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        digests = None
        if args.campaign is None:
            raw = args.code if args.code else _codes_of_file(args.file, args.sale_id)
            digests, bad = [], []
            for i, code in enumerate(raw, 1):
                try:
                    digests.append(codes.digest(key, codes.normalize(code)))
                except codes.MalformedCode as exc:
                    bad.append(f"#{i} {code[:30]!r}: {exc}")
            if bad:
                raise UsageError("malformed code(s), nothing revoked:\n  " + "\n  ".join(bad))
            if not digests:
                raise UsageError("no codes to revoke")
        result = await revoke(pool, engine, args.sale_id, digests=digests, campaign=args.campaign)
        print(f"revoked now: {result.revoked_now:,}; revoked before: {result.already:,}; "
              f"unknown to the sale: {result.unknown:,}")  # fmt: skip
        return 0

    return _run(settings, job)


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.fcodes.admin_ops import stats

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        s = await stats(pool, engine, args.sale_id)
        if args.json:
            print(json.dumps(s.to_json(), indent=2))
            return 0
        cols = ("campaign", "issued", "redeemed", "revoked", "available", "loaded into Redis")
        rows = [
            (c.campaign, f"{c.issued:,}", f"{c.redeemed:,}", f"{c.revoked:,}",
             f"{c.available:,}", "NO: run fcodes load" if c.loaded_at is None
             else f"{c.loaded_at:%Y-%m-%d %H:%M:%S}")
            for c in s.campaigns
        ]  # fmt: skip
        widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows, strict=False)]
        for row in (cols, *rows):
            cells = [str(x).ljust(w) if i in (0, 5) else str(x).rjust(w)
                     for i, (x, w) in enumerate(zip(row, widths, strict=True))]  # fmt: skip
            print("  ".join(cells).rstrip())
        if not rows:
            print(f"(no F-code campaigns for sale {args.sale_id})")
        failures = "n/a (not armed)" if s.fcode_failures is None else f"{s.fcode_failures:,}"
        print(f"F-code guesses refused (Redis): {failures}")
        return 0

    return _run(settings, job)


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.fcodes.admin_ops import check

    key = settings.fcode_key

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        info = await check(pool, engine, key, args.code)
        if args.json:
            print(json.dumps(info, indent=2))
        elif info["result"] == "malformed":
            print(f"not an F-code: {info['message']}")
        elif info["result"] == "unknown":
            print(f"{info['code']}: well-formed, but not issued here (or under another key)")
        else:
            for name, value in info.items():
                if name != "redis":
                    print(f"{name + ':':<13} {'-' if value is None else value}")
            redis = info["redis"]
            if redis is None:
                print("redis:        MISSING (run fcodes load?)")
            else:
                print(f"redis:        {redis['state']} (order {redis['order_id'] or '-'})")
        return 0 if info["result"] == "found" else 1

    return _run(settings, job)
