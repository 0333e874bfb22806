"""``flashsale bookings``: import a channel partner's booking list, export a sale's bookings.

Results go to stdout, progress, warnings and errors to stderr. Exit codes: 0 done; 1 failed, or
done in part (the message says what was done); 2 usage or bad input (bad arguments, a bad list
file; nothing was done).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from flashsale.cli.common import ProgressBar, UsageError, run_job

if TYPE_CHECKING:
    import asyncpg

    from flashsale.booking.importer import ImportReport
    from flashsale.csv_input import UserList
    from flashsale.engine.engine import Engine
    from flashsale.models import SaleView
    from flashsale.settings import Settings

PROG = "flashsale bookings"
EXPORT_HEADER = ("booking_no", "user_id", "booked_at", "source", "queue_rank")
_FETCH_ROWS = 10_000  # rows a cursor fetches at once

# booked_at as the API writes times: ISO 8601 in UTC with milliseconds
_EXPORT_QUERY = """
SELECT booking_no, user_id,
       to_char(booked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS booked_at,
       source, {rank} AS queue_rank
FROM bookings WHERE sale_id = $1 ORDER BY booking_no
"""


def _positive(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {raw!r}")
    return value


EXIT_CODES = """\
exit codes:
  0  done
  1  failed, or done in part (the message says what was done): a store failed; the sale does
     not exist, takes no bookings or no longer takes them; import: users of the list not
     booked because the booking capacity was reached
  2  usage or bad input: bad arguments, an unreadable list or a bad line in it, an output file
     that exists; nothing was done

Results go to stdout (import --json: one JSON document); progress, warnings and errors to
stderr.
"""

LIST = """\
The list: one user id a line, or a CSV file as a spreadsheet or CRM exports it: UTF-8 (with
or without a byte-order mark) or UTF-16, LF or CRLF, delimited by commas, semicolons, tabs or
pipes (found in the file). A first line naming a known column (user_id, id, customer_id,
email, ...) is a header. With several columns, --column NAME or --column NUMBER (1 is the
first) says which to read; without it the header's user_id column is read, and a file whose
column cannot be told is refused. Every line is checked before anything is booked, and an
error names the file, the line and the value. A user listed twice is booked once.
"""


def add_bookings_parser(sub: Any) -> None:
    from flashsale.booking.importer import DEFAULT_BATCH

    raw = argparse.RawDescriptionHelpFormatter
    bk = sub.add_parser("bookings", help="import a booking list, export a sale's bookings",
                        epilog=EXIT_CODES, formatter_class=raw)  # fmt: skip
    bsub = bk.add_subparsers(dest="bookings_command", required=True)

    imp = bsub.add_parser(
        "import", help="book every user of a list (idempotent: repeat it after any failure)",
        epilog=f"{LIST}\n{EXIT_CODES}", formatter_class=raw,
    )  # fmt: skip
    imp.add_argument("sale_id")
    imp.add_argument("file", help="the list of user ids (see below)")
    imp.add_argument("--column", metavar="NAME_OR_NUMBER",
                     help="the column of the file holding the user ids")  # fmt: skip
    imp.add_argument("--batch", type=_positive, default=DEFAULT_BATCH,
                     help=f"users booked per Redis call (default {DEFAULT_BATCH})")  # fmt: skip
    imp.add_argument("--json", action="store_true", help="print the report as JSON")
    imp.set_defaults(func=cmd_import)

    exp = bsub.add_parser("export", help="write a sale's bookings as CSV, by booking number",
                          epilog=EXIT_CODES, formatter_class=raw)  # fmt: skip
    exp.add_argument("sale_id")
    exp.add_argument("--out", metavar="FILE.csv", help="never overwritten (default: stdout)")
    exp.set_defaults(func=cmd_export)


async def _booking_sale(engine: Engine, sale_id: str) -> SaleView:
    """The sale, which takes bookings; a clear failure otherwise."""
    from flashsale import errors

    try:
        view = await engine.get_sale(sale_id)
    except errors.SaleNotFound:
        raise errors.SaleNotFound(f"there is no sale {sale_id}") from None
    if view.definition.booking is None:
        raise errors.BookingNotOffered(f"sale {sale_id}: this sale takes no bookings")
    return view


def _read_list(path: Path, column: str | None) -> UserList:
    from flashsale.csv_input import ListError, read_user_ids

    try:
        users = read_user_ids(path, column)
    except ListError as exc:
        raise UsageError(f"{exc}; nothing was imported") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    print(f"{PROG}: {users.describe()}", file=sys.stderr)
    return users


def _summary(report: ImportReport, bookings: int) -> str:
    numbers = ""
    if report.new:
        numbers = f" (numbered from {report.first_new_no} to {report.last_new_no})"
    return (
        f"imported {report.new:,} new bookings{numbers}, {report.existing:,} already booked, "
        f"{report.refused_full:,} refused (capacity reached); "
        f"the sale now has {bookings:,} bookings"
    )


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale import errors
    from flashsale.booking.importer import ImportReport, import_bookings
    from flashsale.engine.bookings import Bookings

    try:  # the whole list is read and checked before anything is booked
        users = _read_list(Path(args.file), args.column).users
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        view = await _booking_sale(engine, args.sale_id)
        assert view.definition.booking is not None
        bar = ProgressBar()
        done = ImportReport()

        def on_batch(report: ImportReport) -> None:
            nonlocal done
            done = report
            bar("importing", report.total, len(users))

        try:
            report = await import_bookings(
                Bookings(engine), pool, args.sale_id, users,
                batch_size=args.batch, on_batch=on_batch,
            )  # fmt: skip
        except errors.BookingClosed as exc:
            bar.close()
            why = exc.message
            if view.definition.booking.admission.queued:
                why += " (the queue is fixed when the sale starts)"
            if done.new:
                why += (f"; {done.new:,} of the list were booked before that (numbers "
                        f"{done.first_new_no}..{done.last_new_no})")  # fmt: skip
            print(f"{PROG}: {why}", file=sys.stderr)
            return 1
        bar.close()
        bookings = (await engine.get_sale(args.sale_id)).counters.bookings
        if args.json:
            print(json.dumps({
                "total": report.total, "new": report.new, "existing": report.existing,
                "refused_full": report.refused_full, "first_new_no": report.first_new_no,
                "last_new_no": report.last_new_no, "bookings": bookings,
            }))  # fmt: skip
        else:
            print(_summary(report, bookings))
        if report.refused_full:
            capacity = view.definition.booking.capacity
            print(f"{PROG}: {report.refused_full:,} user(s) of the list were NOT booked: all "
                  f"{capacity:,} booking places are taken", file=sys.stderr)  # fmt: skip
            return 1
        return 0

    return run_job(settings, job, PROG)


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    out_path = None if args.out is None else Path(args.out)
    if out_path is not None and (out_path.exists() or out_path.is_symlink()):
        print(f"{PROG}: {out_path} exists; it is never overwritten", file=sys.stderr)
        return 2

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        await _booking_sale(engine, args.sale_id)  # before any file is created
        if out_path is None:
            await _export(pool, engine, args.sale_id, sys.stdout.buffer)
            return 0
        try:
            out = out_path.open("xb")  # never over a file that appeared meanwhile
        except FileExistsError:
            raise UsageError(f"{out_path} exists; it is never overwritten") from None
        try:
            with out:
                await _export(pool, engine, args.sale_id, out)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            out_path.unlink(missing_ok=True)  # no half an export under the name asked for
            raise
        return 0

    return run_job(settings, job, PROG)


async def _export(pool: asyncpg.Pool, engine: Engine, sale_id: str, out: IO[bytes]) -> None:
    from flashsale.booking import lottery
    from flashsale.models import Admission

    async with pool.acquire() as conn, conn.transaction(
        isolation="repeatable_read", readonly=True
    ):  # fmt: skip
        # PostgreSQL's snapshot is taken first, so Redis has given every number it holds
        in_postgres: int = await conn.fetchval(
            "SELECT count(*) FROM bookings WHERE sale_id = $1", sale_id
        )
        view = await _booking_sale(engine, sale_id)
        policy, n = view.definition.booking, view.counters.bookings
        assert policy is not None
        seconds, micros = await engine.redis.time()
        started = seconds * 1000 + micros // 1000 >= view.definition.starts_ms
        if in_postgres < n:
            print(f"{PROG}: warning: {n - in_postgres:,} bookings are still on their way to "
                  "PostgreSQL; run the export again shortly", file=sys.stderr)  # fmt: skip
        if policy.admission is Admission.LOTTERY and started and in_postgres and n:
            assert policy.lottery_seed is not None
            draw = lottery.Draw(policy.lottery_seed, n)

            def drawn_rank(no: int) -> int | str:  # a number Redis never gave has no rank
                return draw.rank(no) if no <= n else ""

            await _export_with_cursor(conn, sale_id, out, drawn_rank)
            return

        async def sink(data: bytes) -> None:
            out.write(data)

        rank = "booking_no" if policy.admission is Admission.BOOKING_ORDER else "NULL::integer"
        await conn.copy_from_query(
            _EXPORT_QUERY.format(rank=rank), sale_id, output=sink, format="csv", header=True
        )
    out.flush()


async def _export_with_cursor(
    conn: asyncpg.Connection, sale_id: str, out: IO[bytes], rank: Callable[[int], int | str]
) -> None:
    """Rows a batch at a time, each with a queue rank computed here (the lottery's draw)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(EXPORT_HEADER)
    query = _EXPORT_QUERY.format(rank="NULL::integer")
    batch = 0
    async for r in conn.cursor(query, sale_id, prefetch=_FETCH_ROWS):
        writer.writerow((r[0], r[1], r[2], r[3], rank(r[0])))
        batch += 1
        if batch == _FETCH_ROWS:
            out.write(text.getvalue().encode())
            text.seek(0)
            text.truncate()
            batch = 0
    out.write(text.getvalue().encode())
    out.flush()
