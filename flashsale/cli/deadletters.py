"""``flashsale deadletters SALE_ID [--retry] [--json]``: the events PostgreSQL refused for good.

Lists a sale's dead letters (store/dead_letters.py): each event the order writer set aside, with
the reason PostgreSQL gave. Once the cause is fixed (a new flashsale, a corrected row),
``--retry`` puts them back into the sale's events stream for the writer; one still refused
comes back as a new dead letter. Exit codes: 0 none left, 1 dead letters remain, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from flashsale.cli.common import UsageError, run_job

if TYPE_CHECKING:
    import asyncpg

    from flashsale.engine.engine import Engine
    from flashsale.settings import Settings

PROG = "flashsale deadletters"


def add_deadletters_parser(sub: Any) -> None:
    cmd = sub.add_parser(
        "deadletters",
        help="list the events PostgreSQL refused for good; put them back with --retry",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("sale_id")
    cmd.add_argument("--retry", action="store_true",
                     help="put them back into the events stream for the order writer")  # fmt: skip
    cmd.add_argument("--json", action="store_true", help="print them as JSON")
    cmd.set_defaults(func=cmd_deadletters)


def cmd_deadletters(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.ids import SALE_ID_RE
    from flashsale.models import iso
    from flashsale.store import dead_letters

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        if not SALE_ID_RE.fullmatch(args.sale_id):
            raise UsageError(f"not a sale id: {args.sale_id!r}")
        keys = engine.keys.sale(args.sale_id)
        letters = await dead_letters.read(engine.redis, keys)
        retried = await dead_letters.retry(engine.redis, keys, letters) if args.retry else 0
        if args.json:
            print(json.dumps({
                "sale_id": args.sale_id,
                "dead_letters": [letter.to_json() for letter in letters],
                "retried": retried,
            }, indent=2))  # fmt: skip
        else:
            for letter in letters:
                what = letter.fields.get("order_id") or (
                    f"booking {letter.fields.get('booking_no', '?')}"
                )
                print(f"{letter.event_id}  {iso(letter.failed_ms)}  {what}  {letter.reason}")
            print(f"{len(letters)} dead letter(s) in sale {args.sale_id}"
                  + (f"; {retried} put back for the order writer" if retried else ""))  # fmt: skip
        return 0 if not letters or retried == len(letters) else 1

    return run_job(settings, job, PROG)
