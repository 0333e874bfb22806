"""``flashsale fcodes``: issue, export, load, revoke and check F-codes, and count them.

Results go to stdout (with ``--json``, one JSON document); progress, warnings and errors to
stderr. Exit codes: 0 done; 1 failed, or done in part (the message says what was done);
2 usage or bad input (bad arguments, a bad list file; nothing was done).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from flashsale.cli.common import Job, ProgressBar, UsageError, run_job

if TYPE_CHECKING:
    import asyncpg

    from flashsale.csv_input import UserList
    from flashsale.engine.engine import Engine
    from flashsale.fcodes.issue import IssuedCode
    from flashsale.settings import Settings

log = logging.getLogger(__name__)

PROG = "flashsale fcodes"
CSV_HEADER = ("code", "code_ref", "user", "campaign", "sale_id")
_BAD_CODES_SHOWN = 20

EXIT_CODES = """\
exit codes:
  0  done
  1  failed, or done in part (the message says what was done): a store failed; the sale or
     campaign is not one the command can work on (no such sale; a sale closed, ended or
     without F-code units; a campaign issued already); codes stored but not all loaded into
     Redis; codes to revoke unknown to the sale; check: the code is not known
  2  usage or bad input: bad arguments, an unreadable list or a bad line in it, an output file
     that exists; nothing was done

Results go to stdout (with --json, one JSON document); progress, warnings and errors to stderr.
"""

LISTS = """\
lists (--bind-users, --file): one value a line, or a CSV file as a spreadsheet or CRM exports
it: UTF-8 (with or without a byte-order mark) or UTF-16, LF or CRLF, delimited by commas,
semicolons, tabs or pipes (found in the file). A first line naming a known column (user_id,
id, customer_id, email, code, ...) is a header. With several columns, --column NAME or
--column NUMBER (1 is the first) says which to read; without it the header's user_id (or
code) column is read, and a file whose column cannot be told is refused. Every line is checked
before anything changes, and an error names the file, the line and the value.
"""

ISSUE_EPILOG = f"""\
The codes are stored only as HMACs: the --out file is their only copy, and they cannot be
shown again. Keep it safe (it is made readable by its owner alone). Its columns:
{", ".join(CSV_HEADER)}; code_ref is how `flashsale fcodes export` lists each code, to
join the two files.

Refused (nothing issued): a sale that is closed or has ended, or that sets no units aside for
F-codes (fcode_stock 0). Issued with a warning: more usable codes than F-code units left, a
paused sale, users who already hold a code of the sale.

{LISTS}
{EXIT_CODES}"""

EXPORT_EPILOG = f"""\
One row per code: code_ref, campaign, bound_user, state, issued_at, order_id, order_status,
paid, redeemed_by, redeemed_at, revoked_at (times in UTC, ISO 8601). The code itself cannot
be exported (only its HMAC is kept): code_ref is the column of the same name in the file
`issue --out` wrote. order_id and redeemed_* are the code's last order; one that
expired or was cancelled gave the code back (state issued). PostgreSQL's view: redemptions and
payments arrive a moment after they happen.

{EXIT_CODES}"""


def _parser(sub: Any, name: str, help: str, epilog: str = EXIT_CODES) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=help[0].upper() + help[1:] + ".", epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    return parser


def _json_flag(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as one JSON document")


def add_fcodes_parser(sub: Any) -> None:
    fc = sub.add_parser(
        "fcodes", help="issue, export, load, revoke and check F-codes; their stats",
        description="F-codes: issue a campaign, export who used which code, reload a campaign "
        "into Redis, revoke codes, see the numbers per campaign, check one code.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    fsub = fc.add_subparsers(dest="fcodes_command", required=True)

    issue = _parser(fsub, "issue", "issue a campaign of codes into a CSV file", ISSUE_EPILOG)
    issue.add_argument("sale_id")
    issue.add_argument("--campaign", required=True,
                       help="name, e.g. spring-vip: lower-case letters, digits, '_' and '-', "
                       "once per sale")  # fmt: skip
    issue.add_argument("--count", type=int,
                       help="number of codes (with --bind-users: one per user)")  # fmt: skip
    issue.add_argument("--bind-users", metavar="FILE",
                       help="a list of user ids (see below): a code bound to each")  # fmt: skip
    issue.add_argument("--column", metavar="NAME_OR_NUMBER",
                       help="the column of --bind-users holding the user ids")  # fmt: skip
    issue.add_argument("--out", required=True, metavar="FILE.csv",
                       help="the codes' only copy; never overwritten")  # fmt: skip
    _json_flag(issue)
    issue.set_defaults(func=cmd_issue)

    export = _parser(fsub, "export", "list a sale's codes: state, who redeemed, paid or not",
                     EXPORT_EPILOG)  # fmt: skip
    export.add_argument("sale_id")
    export.add_argument("--campaign", help="only this campaign")
    export.add_argument("--state", choices=("issued", "redeemed", "revoked"),
                        help="only codes in this state")  # fmt: skip
    export.add_argument("--format", choices=("csv", "json"), default="csv",
                        help="CSV with a header (default), or one JSON document")  # fmt: skip
    export.add_argument("--json", action="store_const", dest="format", const="json",
                        help="the same as --format json")  # fmt: skip
    export.add_argument("--out", metavar="FILE", help="never overwritten (default: stdout)")
    export.set_defaults(func=cmd_export)

    load = _parser(fsub, "load", "load a campaign from PostgreSQL into Redis (again)")
    load.add_argument("sale_id")
    load.add_argument("--campaign", required=True)
    _json_flag(load)
    load.set_defaults(func=cmd_load)

    revoke = _parser(fsub, "revoke", "revoke codes: some, a file of them, or a campaign",
                     f"{LISTS}\n{EXIT_CODES}")  # fmt: skip
    revoke.add_argument("sale_id")
    what = revoke.add_mutually_exclusive_group(required=True)
    what.add_argument("--code", action="append", help="a code (repeatable)")
    what.add_argument("--file", help="the CSV issue wrote, or a list of codes (see lists below)")
    what.add_argument("--campaign", help="every code of this campaign")
    revoke.add_argument("--column", metavar="NAME_OR_NUMBER",
                        help="the column of --file holding the codes")  # fmt: skip
    _json_flag(revoke)
    revoke.set_defaults(func=cmd_revoke)

    stats = _parser(fsub, "stats", "codes per campaign of a sale: issued, redeemed (paid or "
                    "not), revoked, available")  # fmt: skip
    stats.add_argument("sale_id")
    _json_flag(stats, "the numbers")
    stats.set_defaults(func=cmd_stats)

    check = _parser(fsub, "check", "what is known about one code (for support)")
    check.add_argument("code")
    _json_flag(check, "what is known")
    check.set_defaults(func=cmd_check)


def _run(settings: Settings, job: Job) -> int:
    return run_job(settings, job, PROG)


def _usage(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _print_json(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2))


def _read_users(path: str, column: str | None) -> UserList:
    from flashsale.csv_input import ListError, read_user_ids

    try:
        users = read_user_ids(Path(path), column, unique=True)
    except ListError as exc:
        raise UsageError(f"{exc}; nothing was issued") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    print(f"{PROG}: {users.describe()}", file=sys.stderr)
    return users


def _write_csv(path: Path, rows: list[IssuedCode], campaign: str, sale_id: str) -> None:
    started = time.perf_counter()
    # the codes are secrets: readable by their owner only, and never over an existing file
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        writer.writerows((c.code, c.code_ref, c.user, campaign, sale_id) for c in rows)
        f.flush()
        os.fsync(f.fileno())
    log.info("campaign %s: csv %s: %.2f s", campaign, path, time.perf_counter() - started)


def cmd_issue(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.fcodes import codes
    from flashsale.fcodes.issue import LoadIncomplete, check_campaign, issue_campaign, load_command

    out = Path(args.out)
    partial = out.with_name(out.name + ".partial")
    if out.exists() or out.is_symlink():
        return _usage(f"{out} exists; it is never overwritten")
    if not out.parent.is_dir():
        return _usage(f"cannot write {out}: there is no directory {out.parent}")
    if partial.exists():
        return _usage(f"{partial} exists: an earlier run was interrupted. Its codes may be "
                      "issued (see `flashsale fcodes stats`); move it away first")  # fmt: skip
    if args.count is None and args.bind_users is None:
        return _usage("give --count, --bind-users or both")
    if args.column is not None and args.bind_users is None:
        return _usage("--column names a column of --bind-users")
    try:
        users = None if args.bind_users is None else _read_users(args.bind_users, args.column)
    except UsageError as exc:
        return _usage(str(exc))
    key = settings.fcode_key
    bar = ProgressBar()
    written: list[IssuedCode] = []  # the codes, once the partial file holds them all
    warnings: list[str] = []

    def on_generated(made: list[IssuedCode]) -> None:
        bar.close()
        _write_csv(partial, made, args.campaign, args.sale_id)
        written.extend(made)

    def on_warning(message: str) -> None:
        bar.close()
        warnings.append(message)
        _warn(message)

    def document(count: int, loaded: bool, added: int, elapsed: float) -> dict[str, Any]:
        return {
            "sale_id": args.sale_id, "campaign": args.campaign, "codes": count,
            "bound_users": 0 if users is None else len(users.users), "out": str(out),
            "columns": list(CSV_HEADER),
            "input": None if users is None else users.layout.to_json(),
            "loaded_into_redis": loaded, "added_to_redis": added,
            "load_command": None if loaded else load_command(args.sale_id, args.campaign),
            "warnings": warnings, "elapsed_s": round(elapsed, 3),
        }  # fmt: skip

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        check_campaign(args.campaign)
        started = time.perf_counter()
        try:
            issued = await issue_campaign(
                pool, engine, key, args.sale_id, args.campaign, count=args.count,
                bind_users=None if users is None else users.users, progress=bar,
                on_generated=on_generated, on_warning=on_warning,
            )  # fmt: skip
        except LoadIncomplete as exc:
            bar.close()
            _publish(partial, out)  # stored in PostgreSQL: the codes are real
            print(f"{PROG}: {exc.message}; the codes are in {out}", file=sys.stderr)
            if args.json:
                _print_json(document(len(written), False, 0, time.perf_counter() - started))
            return 1
        except BaseException:  # an error before the commit, or an interrupt at any point
            bar.close()
            first = written[0].code.replace("-", "") if written else None
            if first is not None and not await _stored(pool, codes.digest(key, first)):
                partial.unlink()
            elif first is not None:
                _publish(partial, out)  # stored in PostgreSQL: the codes are real
                load = load_command(args.sale_id, args.campaign)
                print(f"{PROG}: interrupted after the codes were stored; they are in {out}. "
                      f"They may not all be in Redis: run `{load}`", file=sys.stderr)  # fmt: skip
            raise
        bar.close()
        _publish(partial, out)
        elapsed = time.perf_counter() - started
        n = len(issued.codes)
        if args.json:
            _print_json(document(n, True, issued.added_to_redis, elapsed))
        else:
            bound = "" if users is None else ", each bound to a user"
            print(f"issued {n:,} codes of campaign {args.campaign} for sale {args.sale_id}"
                  f"{bound}, in {elapsed:.1f} s: {out}")  # fmt: skip
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


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.fcodes.export import check_export, exported_codes

    out_path = None if args.out is None else Path(args.out)
    if out_path is not None and (out_path.exists() or out_path.is_symlink()):
        return _usage(f"{out_path} exists; it is never overwritten")
    if out_path is not None and not out_path.parent.is_dir():
        return _usage(f"cannot write {out_path}: there is no directory {out_path.parent}")

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        await check_export(pool, args.sale_id, args.campaign)  # before any file is made
        rows = exported_codes(pool, args.sale_id, campaign=args.campaign, state=args.state)
        if out_path is None:
            await _write_export(rows, sys.stdout, args)
            sys.stdout.flush()
            return 0
        f = _create(out_path)
        try:
            with f:
                n = await _write_export(rows, f, args)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            out_path.unlink(missing_ok=True)  # no half an export under the name asked for
            raise
        print(f"{PROG}: exported {n:,} codes of sale {args.sale_id} to {out_path}",
              file=sys.stderr)  # fmt: skip
        return 0

    return _run(settings, job)


def _create(path: Path) -> IO[str]:
    """A new file, readable by its owner only (user ids are personal data)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists; it is never overwritten") from None
    return open(fd, "w", newline="", encoding="utf-8")


async def _write_export(
    rows: AsyncIterator[dict[str, Any]], out: IO[str], args: argparse.Namespace
) -> int:
    from flashsale.fcodes.export import COLUMNS

    n = 0
    if args.format == "json":
        head = {"sale_id": args.sale_id, "campaign": args.campaign, "state": args.state}
        out.write(json.dumps(head)[:-1] + ', "columns": ' + json.dumps(COLUMNS) + ', "codes": [')
        async for row in rows:
            out.write(("\n  " if n == 0 else ",\n  ") + json.dumps(row))
            n += 1
        out.write("\n]}\n" if n else "]}\n")
        return n
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    async for row in rows:
        writer.writerow(_csv_cell(row[c]) for c in COLUMNS)
        n += 1
    return n


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def cmd_load(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.fcodes.issue import check_campaign, load_campaign_from_postgres

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        check_campaign(args.campaign)
        bar = ProgressBar()
        added = await load_campaign_from_postgres(
            pool, engine, args.sale_id, args.campaign, progress=bar
        )
        bar.close()
        if args.json:
            _print_json({"sale_id": args.sale_id, "campaign": args.campaign, "added": added})
        else:
            print(f"campaign {args.campaign} of sale {args.sale_id} loaded: {added:,} code(s) "
                  "added to Redis, the others were there already")  # fmt: skip
        return 0

    return _run(settings, job)


def _codes_of_file(path: str, column: str | None, sale_id: str) -> list[tuple[str, str]]:
    """(where, code) of each code a file lists; the CSV issue wrote must be of this sale."""
    from flashsale.csv_input import CODE_NAMES, ListError, read_layout, rows

    try:
        layout = read_layout(Path(path), column=column, wanted=CODE_NAMES, what="codes",
                             comments=True)  # fmt: skip
        sale_column = layout.index("sale_id")
        found: list[tuple[str, str]] = []
        others: set[str] = set()
        for line, cells in rows(layout):
            code = cells[layout.column]
            if not code:
                raise ListError(f"{path}:{line}: no code in {layout.column_label()}")
            if sale_column is not None and cells[sale_column] not in ("", sale_id):
                others.add(cells[sale_column])
            found.append((f"{path}:{line}", code))
    except ListError as exc:
        raise UsageError(f"{exc}; nothing was revoked") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if others:
        raise UsageError(f"{path} holds codes of sale(s) {', '.join(sorted(others))}, not of "
                         f"{sale_id}; nothing was revoked")  # fmt: skip
    print(f"{PROG}: {layout.describe(len(found), 'code')}", file=sys.stderr)
    return found


def cmd_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.fcodes import codes
    from flashsale.fcodes.admin_ops import revoke

    key = settings.fcode_key
    if args.column is not None and args.file is None:
        return _usage("--column names a column of --file")
    digests = None
    if args.campaign is None:
        try:
            if args.code:
                listed = [(f"--code #{i}", code) for i, code in enumerate(args.code, 1)]
            else:
                listed = _codes_of_file(args.file, args.column, args.sale_id)
        except UsageError as exc:
            return _usage(str(exc))
        digests, bad = [], []
        for where, code in listed:
            try:
                digests.append(codes.digest(key, codes.normalize(code)))
            except codes.MalformedCode as exc:
                bad.append(f"{where}: {exc}: {code[:30]!r}")
        if bad:
            more = len(bad) - _BAD_CODES_SHOWN
            shown = bad[:_BAD_CODES_SHOWN] + ([f"... and {more:,} more"] if more > 0 else [])
            return _usage(f"{len(bad):,} malformed code(s), nothing revoked:\n  " +
                          "\n  ".join(shown))  # fmt: skip
        if not digests:
            return _usage("no codes to revoke")

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        result = await revoke(pool, engine, args.sale_id, digests=digests, campaign=args.campaign)
        if args.json:
            _print_json({
                "sale_id": args.sale_id, "campaign": args.campaign,
                "revoked_now": result.revoked_now, "revoked_before": result.already,
                "unknown": result.unknown,
            })  # fmt: skip
        else:
            print(f"revoked now: {result.revoked_now:,}; revoked before: {result.already:,}; "
                  f"unknown to the sale: {result.unknown:,}")  # fmt: skip
        if result.unknown:
            print(f"{PROG}: {result.unknown:,} code(s) are not in sale {args.sale_id} in Redis: "
                  "never issued for it (or issued with another FLASHSALE_FCODE_SECRET), or "
                  "their campaign is not loaded (`flashsale fcodes stats`); the others were "
                  "revoked", file=sys.stderr)  # fmt: skip
            return 1
        return 0

    return _run(settings, job)


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.fcodes.admin_ops import stats

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        s = await stats(pool, engine, args.sale_id)
        if args.json:
            _print_json(s.to_json())
            return 0
        cols = ("campaign", "issued", "redeemed", "paid", "unpaid", "revoked", "available",
                "loaded into Redis")  # fmt: skip
        rows = [
            (c.campaign, f"{c.issued:,}", f"{c.redeemed:,}", f"{c.redeemed_paid:,}",
             f"{c.redeemed_unpaid:,}", f"{c.revoked:,}", f"{c.available:,}",
             "NO: run fcodes load" if c.loaded_at is None
             else f"{c.loaded_at:%Y-%m-%d %H:%M:%S}")
            for c in s.campaigns
        ]  # fmt: skip
        widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows, strict=False)]
        left = (0, len(cols) - 1)
        for row in (cols, *rows):
            cells = [str(x).ljust(w) if i in left else str(x).rjust(w)
                     for i, (x, w) in enumerate(zip(row, widths, strict=True))]  # fmt: skip
            print("  ".join(cells).rstrip())
        if not rows:
            print(f"(no F-code campaigns for sale {args.sale_id})")
        failures = "n/a (not armed)" if s.fcode_failures is None else f"{s.fcode_failures:,}"
        print(f"F-code guesses refused (Redis): {failures}")
        print("paid / unpaid: redeemed codes whose order is paid / not yet paid (PostgreSQL)")
        return 0

    return _run(settings, job)


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.fcodes.admin_ops import check

    key = settings.fcode_key

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        info = await check(pool, engine, key, args.code)
        if args.json:
            _print_json(info)
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
