"""``flashsale opening``: export an opening window's ticket list, and verify its order.

Results go to stdout (with ``--json``, one JSON document); errors to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flashsale.settings import Settings

PROG = "flashsale opening"

EXIT_CODES = """\
exit codes:
  0  done; verify: the list is in the order the seed gives and matches what was published
  1  failed: a store or the service failed, the sale has no opening window or its window is
     still open; verify: the list does not match (the report says where)
  2  usage or bad input: bad arguments, an unreadable ticket list, an output file that exists
"""

EXPORT_EPILOG = f"""\
One row per ticket, in rank order: rank, ticket, user_digest, drawn (1: a ticket of the
window, put in order by the draw; 0: given after the window, in arrival order). user_digest
is the hex of the first 10 bytes of BLAKE2b(user id, digest_size=14, person=b"flashsale-bk"),
so a shopper can find their own line. The SHA-256 of the drawn rows' lines
"<rank>,<ticket>,<user_digest>\\n" is the ordered_list_sha256 that
GET /v1/sales/SALE_ID/opening publishes; it is printed on stderr.

{EXIT_CODES}"""

VERIFY_EPILOG = f"""\
Re-derives the order of the drawn tickets from the seed (method flashsale-opening-v1: the
Feistel permutation of flashsale/booking/lottery.py under its own round keys) and checks the
list against it, the later tickets' arrival order, and, when given or fetched from the
service, the published SHA-256 of the ordered list, the number of drawn tickets and the seed's
commitment. --service URL --sale SALE_ID reads all of them from GET /v1/sales/SALE_ID/opening.

{EXIT_CODES}"""


def add_opening_parser(sub: Any) -> None:
    op = sub.add_parser(
        "opening", help="an opening window's tickets: export the list, verify the draw",
        description="The opening window: export a sale's ticket list in rank order, and "
        "verify an exported list against the published seed and digest.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    osub = op.add_subparsers(dest="opening_command", required=True)

    export = osub.add_parser(
        "export", help="write the ticket list, in rank order", epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    export.add_argument("sale_id")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    export.add_argument("--out", metavar="FILE", help="write here (never overwritten), not stdout")
    export.set_defaults(func=cmd_export)

    verify = osub.add_parser(
        "verify", help="check an exported list against the seed and what was published",
        epilog=VERIFY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    verify.add_argument("file", help="a list `opening export` wrote (CSV or JSON lines)")
    verify.add_argument("--seed", help="the published seed")
    verify.add_argument("--digest", metavar="SHA256", help="the published ordered_list_sha256")
    verify.add_argument("--seed-sha256", metavar="SHA256", help="the published commitment")
    verify.add_argument("--window-tickets", type=int, metavar="N",
                        help="the published number of drawn tickets")  # fmt: skip
    verify.add_argument("--service", metavar="URL",
                        help="read the seed and the rest from this service")  # fmt: skip
    verify.add_argument("--sale", metavar="SALE_ID", help="with --service: the sale")
    verify.add_argument("--json", action="store_true", help="the report as JSON")
    verify.set_defaults(func=cmd_verify)


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    out_path = Path(args.out) if args.out else None
    if out_path is not None and out_path.exists():
        print(f"{PROG} export: {out_path} exists; it is never overwritten", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_export(settings, args.sale_id, args.format, out_path))
    except Exception as exc:
        from redis.exceptions import RedisError

        from flashsale import errors

        if isinstance(exc, errors.FlashsaleError):
            print(f"{PROG} export: {exc.message}", file=sys.stderr)
            return 1
        if isinstance(exc, RedisError | OSError | RuntimeError):
            print(f"{PROG} export: {exc}", file=sys.stderr)
            return 1
        raise


async def _export(settings: Settings, sale_id: str, fmt: str, out_path: Path | None) -> int:
    from flashsale.engine.connection import connect_redis
    from flashsale.engine.keys import Keyspace
    from flashsale.ids import SALE_ID_RE
    from flashsale.opening import export, roll, shuffle

    if not SALE_ID_RE.match(sale_id):
        print(f"{PROG} export: {sale_id!r} is not a sale id", file=sys.stderr)
        return 2
    redis = connect_redis(settings)
    try:
        state, ordered = await roll.ticket_rows(redis, Keyspace(settings.key_prefix).sale(sale_id))
    finally:
        await redis.aclose()
    assert state.window_tickets is not None
    rows = await asyncio.to_thread(list, export.rows_of(ordered, state.window_tickets))
    digest = shuffle.digest((r.rank, r.ticket, r.user_digest) for r in rows if r.drawn)
    if out_path is None:
        export.write(rows, fmt, sys.stdout.buffer)
        sys.stdout.flush()
    else:
        with out_path.open("xb") as f:
            export.write(rows, fmt, f)
    print(f"{PROG} export: {len(rows):,} ticket(s), {state.window_tickets:,} drawn; seed "
          f"{state.seed}; ordered list SHA-256 {digest}", file=sys.stderr)  # fmt: skip
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.opening import export
    from flashsale.opening.verify import verify

    published: dict[str, Any] = {}
    if args.service:
        if not args.sale:
            print(f"{PROG} verify: --service needs --sale SALE_ID", file=sys.stderr)
            return 2
        try:
            published = _fetch_opening(args.service, args.sale)
        except (OSError, ValueError) as exc:
            print(f"{PROG} verify: {exc}", file=sys.stderr)
            return 1
    seed = args.seed or published.get("seed")
    if not seed:
        print(f"{PROG} verify: give --seed (or --service URL --sale SALE_ID)", file=sys.stderr)
        return 2
    if args.seed and published.get("seed") and args.seed != published["seed"]:
        print(f"{PROG} verify: --seed is not the seed the service published", file=sys.stderr)
        return 1
    try:
        with open(args.file, encoding="utf-8", newline="") as source:
            rows = export.read(source)
    except (OSError, UnicodeDecodeError, export.BadTicketFile) as exc:
        print(f"{PROG} verify: {args.file}: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"{PROG} verify: {args.file} holds no ticket", file=sys.stderr)
        return 2
    result = verify(
        rows, seed,
        digest=args.digest or published.get("ordered_list_sha256"),
        seed_sha256=args.seed_sha256 or published.get("seed_sha256"),
        window_tickets=(
            args.window_tickets if args.window_tickets is not None
            else published.get("window_tickets")
        ),
    )  # fmt: skip
    _report(result.to_json(), args.json, sys.stdout)
    return 0 if result.ok else 1


def _fetch_opening(service: str, sale_id: str) -> dict[str, Any]:
    url = f"{service.rstrip('/')}/v1/sales/{urllib.parse.quote(sale_id, safe='')}/opening"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise ValueError(f"{url} answered {exc.code}: {detail}") from None
    opening: dict[str, Any] = body["opening"]
    return opening


def _report(result: dict[str, Any], as_json: bool, out: IO[str]) -> None:
    if as_json:
        out.write(json.dumps(result, indent=2) + "\n")
        return
    out.write(
        f"{result['tickets']:,} ticket(s), {result['window_tickets']:,} drawn; ordered list "
        f"SHA-256 {result['ordered_list_sha256']}\n"
    )
    for line in result["checked"]:
        out.write(f"ok: {line}\n")
    for line in result["problems"]:
        out.write(f"MISMATCH: {line}\n")
    out.write("verified\n" if result["ok"] else "NOT verified\n")
