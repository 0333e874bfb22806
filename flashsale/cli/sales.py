"""``flashsale sales``: create and run sales over the admin HTTP API.

Commands: create, list, show, edit, pause, resume, close, delete, watch. They talk to a running
service: ``--url`` (or FLASHSALE_SERVICE_URL, default http://127.0.0.1:8080) with the admin
token ``--token`` (or FLASHSALE_ADMIN_TOKEN).

Exit codes: 0 done; 1 refused or failed (the service said no, it cannot be reached, or a
confirmation was declined: the message says why); 2 usage (bad arguments, an unreadable
file, no admin token), nothing was sent.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flashsale.cli.admin_client import (
    AdminClient,
    ClientError,
    Refused,
    admin_token,
    sale_path,
    service_url,
)

PROG = "flashsale sales"

EXAMPLE = """\
times: ISO 8601 with a UTC offset ("2026-11-22T10:00:00+08:00", "...Z"), or, on the command
line only, "now" or a time from now: +90s, +10m, +2h, +1d.

example:
  flashsale sales create --sku redmi-note-13 --name "Redmi Note 13" --price-cents 19900 \\
      --currency USD --stock 1000 --per-user-limit 1 \\
      --starts-at 2026-11-22T10:00:00+08:00 --ends-at 2026-11-22T12:00:00+08:00

or with --file sale.toml (or sale.json: the same fields, the body of POST /v1/admin/sales;
flags given beside it win):
  sku = "redmi-note-13"
  name = "Redmi Note 13"
  price_cents = 19900
  currency = "USD"
  stock = 10000
  fcode_stock = 4700                    # units set aside for F-code holders
  per_user_limit = 1
  starts_at = 2026-11-22T10:00:00+08:00 # a TOML time, or a string
  ends_at = 2026-11-22T12:00:00+08:00
  reservation_ttl_s = 900

The other fields (booking, rate limits) are in the README, section HTTP API.
"""

# flag -> the API's field; the common fields of a sale (the rest through --file)
_FIELDS: dict[str, tuple[str, type]] = {
    "sale_id": ("--sale-id", str),
    "sku": ("--sku", str),
    "name": ("--name", str),
    "price_cents": ("--price-cents", int),
    "currency": ("--currency", str),
    "stock": ("--stock", int),
    "per_user_limit": ("--per-user-limit", int),
    "starts_at": ("--starts-at", str),
    "ends_at": ("--ends-at", str),
    "reservation_ttl_s": ("--reservation-ttl-s", int),
    "fcode_stock": ("--fcode-stock", int),
    "fcode_opens_at": ("--fcode-opens-at", str),
}
_TIMES = frozenset({"starts_at", "ends_at", "fcode_opens_at", "booking_opens_at",
                    "booking_closes_at"})  # fmt: skip
_FROM_NOW = re.compile(r"\A\+(\d+)([smhd])\Z")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class UsageError(Exception):
    """Bad arguments or an unreadable file: exit 2, nothing sent."""


def add_sales_parser(sub: Any) -> None:
    sales = sub.add_parser(
        "sales",
        help="create, list, show, edit, pause, resume, close, delete and watch sales",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ssub = sales.add_subparsers(dest="sales_command", required=True)

    def command(name: str, help_: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = ssub.add_parser(
            name, help=help_, description=help_[:1].upper() + help_[1:] + ".",
            formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs,
        )  # fmt: skip
        parser.add_argument("--url", help="the service (default: FLASHSALE_SERVICE_URL, or "
                            "http://127.0.0.1:8080)")  # fmt: skip
        parser.add_argument("--token", help="the admin token (default: FLASHSALE_ADMIN_TOKEN)")
        return parser

    create = command("create", "create a sale, from flags or a file", epilog=EXAMPLE)
    _definition_arguments(create, with_id=True)
    create.add_argument("--json", action="store_true", help="print the answer as JSON")
    create.set_defaults(func=cmd_create)

    list_ = command("list", "the sales, the latest start first")
    list_.add_argument("--status", help="only these statuses, comma-separated: scheduled, "
                       "open, paused, sold_out, ended")  # fmt: skip
    list_.add_argument("--limit", type=int, default=100, help="at most this many (1 to 1000)")
    list_.add_argument("--json", action="store_true", help="print the answer as JSON")
    list_.set_defaults(func=cmd_list)

    show = command("show", "a sale's definition and every counter")
    show.add_argument("sale_id")
    show.add_argument("--json", action="store_true", help="print sale and stats as JSON")
    show.set_defaults(func=cmd_show)

    edit = command(
        "edit",
        "correct a sale before it opens (and before its F-code lane and booking do)",
        epilog="Only the fields given change; --unset FIELD puts one back to its default "
        "(fcode_opens_at: with the public; booking_opens_at and booking_closes_at both: no "
        "booking). Refused (exit 1) once the sale, its F-code lane or its booking has opened, "
        "or when F-codes or imported bookings depend on the change.\n\n" + EXAMPLE,
    )
    edit.add_argument("sale_id")
    _definition_arguments(edit, with_id=False)
    edit.add_argument("--unset", action="append", default=[], metavar="FIELD",
                      help="put FIELD back to its default (repeatable)")  # fmt: skip
    edit.add_argument("--json", action="store_true", help="print the answer as JSON")
    edit.set_defaults(func=cmd_edit)

    for name, help_ in (
        ("pause", "pause a sale: shoppers get 409 sale_paused until it is resumed"),
        ("resume", "resume a paused sale"),
    ):
        parser = command(name, help_)
        parser.add_argument("sale_id")
        parser.add_argument("--json", action="store_true", help="print the answer as JSON")
        parser.set_defaults(func=cmd_state, action=name)

    close = command(
        "close",
        "close a sale for good",
        epilog="Nothing more is sold, and units that come back are not sold again. "
        "Reservations not yet paid can still be paid or cancelled until they expire: the "
        "command says how many there are and when the last expires. Asks first, unless --yes.",
    )
    close.add_argument("sale_id")
    close.add_argument("--yes", action="store_true", help="do not ask")
    close.add_argument("--json", action="store_true", help="print the answer as JSON")
    close.set_defaults(func=cmd_state, action="close")

    delete = command(
        "delete",
        "delete a sale that never opened and holds no order, booking or F-code",
        epilog="Its Redis keys and its PostgreSQL row go; its id is free again. Asks first, "
        "unless --yes.",
    )
    delete.add_argument("sale_id")
    delete.add_argument("--yes", action="store_true", help="do not ask")
    delete.set_defaults(func=cmd_delete)

    watch = command(
        "watch",
        "a live view of a sale's numbers, every second, until it ends or Ctrl-C",
        epilog="The numbers of GET /v1/admin/sales/{id}/stats: the stock (available, "
        "F-code, reserved, paid), the pace (units sold a second, from successive polls), the "
        "queue (admitted, waiting), orders in PostgreSQL and dead letters.",
    )
    watch.add_argument("sale_id")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    watch.add_argument("--once", action="store_true", help="show the numbers once and stop")
    watch.set_defaults(func=cmd_watch)


def _definition_arguments(parser: argparse.ArgumentParser, *, with_id: bool) -> None:
    parser.add_argument("--file", type=Path, help="the sale's fields, TOML (.toml) or JSON")
    for field, (flag, kind) in _FIELDS.items():
        if field == "sale_id" and not with_id:
            continue
        parser.add_argument(flag, dest=field, type=kind, metavar=field.upper())


def client(args: argparse.Namespace) -> AdminClient:
    token = admin_token(args.token)
    if token is None:
        raise UsageError("no admin token: set FLASHSALE_ADMIN_TOKEN or give --token")
    return AdminClient(service_url(args.url), token)


def run(args: argparse.Namespace, body: Any) -> int:
    """Run a command body (a function of the client), with the exit codes of the module."""
    try:
        code: int = body(client(args))
        return code
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"{PROG}: refused ({exc.status} {exc.code}): {exc.message}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


# -- the definition: flags and files -------------------------------------------------------------


def parse_time(text: str, now: datetime | None = None) -> str:
    """A command-line time: "now", "+10m", or ISO 8601 as the API takes it (left to it)."""
    now = now or datetime.now(UTC)
    if text == "now":
        return now.isoformat()
    match = _FROM_NOW.match(text)
    if match:
        return (now + timedelta(**{_UNITS[match[2]]: int(match[1])})).isoformat()
    return text


def read_file(path: Path) -> dict[str, Any]:
    """A sale's fields from a TOML or JSON file (by its extension)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            fields = tomllib.loads(raw.decode())
        elif path.suffix.lower() == ".json":
            fields = json.loads(raw)
        else:
            raise UsageError(f"{path}: a sale file is .toml or .json")
    except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError, JSONDecodeError
        raise UsageError(f"{path}: {exc}") from None
    if not isinstance(fields, dict):
        raise UsageError(f"{path}: the file must hold the sale's fields (an object)")
    for name, value in list(fields.items()):
        if isinstance(value, datetime):  # a TOML time
            if value.tzinfo is None:
                raise UsageError(
                    f"{path}: {name} = {value.isoformat()} has no UTC offset: add one "
                    "(e.g. +08:00, or Z)"
                )
            fields[name] = value.isoformat()
    return fields


def definition(args: argparse.Namespace, *, with_id: bool = True) -> dict[str, Any]:
    body = read_file(args.file) if args.file is not None else {}
    for field in _FIELDS:
        if field == "sale_id" and not with_id:  # edit's SALE_ID names the sale to change
            continue
        value = getattr(args, field, None)
        if value is not None:
            body[field] = parse_time(value) if field in _TIMES else value
    return body


# -- the commands ---------------------------------------------------------------------------------


def cmd_create(args: argparse.Namespace, _settings: object = None) -> int:
    def body(api: AdminClient) -> int:
        fields = definition(args)
        if not fields:
            raise UsageError("give the sale's fields: flags, or --file (see --help)")
        _print_written(args, api.call("POST", "/v1/admin/sales", fields), "created")
        return 0

    return run(args, body)


def _print_written(args: argparse.Namespace, answer: dict[str, Any], done: str) -> None:
    """A created or edited sale: its warnings on stderr, then the sale (as JSON with --json)."""
    _print_warnings(answer)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        sale = answer["sale"]
        print(f"{done} sale {sale['sale_id']} ({sale['status']}): {describe(sale)}")


def cmd_edit(args: argparse.Namespace, _settings: object = None) -> int:
    def body(api: AdminClient) -> int:
        fields: dict[str, Any] = definition(args, with_id=False)
        for name in args.unset:
            fields[name] = None
        if not fields:
            raise UsageError("nothing to change: give fields (flags, --file) or --unset FIELD")
        _print_written(args, api.call("PATCH", sale_path(args.sale_id), fields), "edited")
        return 0

    return run(args, body)


def cmd_list(args: argparse.Namespace, _settings: object = None) -> int:
    def body(api: AdminClient) -> int:
        query: dict[str, str | int] = {"limit": args.limit}
        if args.status:
            query["status"] = args.status
        answer = api.call("GET", "/v1/admin/sales", query=query)
        if args.json:
            print(json.dumps(answer, indent=2))
            return 0
        print(sales_table(answer["sales"]))
        if answer.get("not_armed"):
            print(f"{PROG}: in PostgreSQL but not in Redis (repeat their create, or delete "
                  f"them): {', '.join(answer['not_armed'])}", file=sys.stderr)  # fmt: skip
        return 0

    return run(args, body)


def cmd_show(args: argparse.Namespace, _settings: object = None) -> int:
    def body(api: AdminClient) -> int:
        sale = api.call("GET", sale_path(args.sale_id))["sale"]
        stats = api.call("GET", sale_path(args.sale_id, "stats"))["stats"]
        if args.json:
            print(json.dumps({"sale": sale, "stats": stats}, indent=2))
        else:
            print(render_show(sale, stats))
        return 0

    return run(args, body)


def cmd_state(args: argparse.Namespace, _settings: object = None) -> int:
    def body(api: AdminClient) -> int:
        if args.action == "close" and not args.yes:
            stats = api.call("GET", sale_path(args.sale_id, "stats"))["stats"]
            unpaid = ""
            if stats["reserved"]:
                unpaid = (
                    f" {stats['reserved']} reserved unit(s) can still be paid or cancelled "
                    f"until their reservations expire (the last at "
                    f"{stats['last_reservation_expires_at']})."
                )
            question = (f"Close sale {args.sale_id} for good? Nothing more will be sold, and "
                        f"units that come back are not sold again.{unpaid}")  # fmt: skip
            if not confirm(question):
                return 1
        answer = api.call("POST", sale_path(args.sale_id, args.action))
        if args.json:
            print(json.dumps(answer, indent=2))
            return 0
        sale = answer["sale"]
        print(f"sale {sale['sale_id']}: {sale['status']} (control {sale['control']})")
        if answer.get("note"):
            print(answer["note"])
        return 0

    return run(args, body)


def cmd_delete(args: argparse.Namespace, _settings: object = None) -> int:
    def body(api: AdminClient) -> int:
        if not args.yes and not confirm(
            f"Delete sale {args.sale_id}? Its Redis keys and its PostgreSQL row go."
        ):
            return 1
        api.call("DELETE", sale_path(args.sale_id))
        print(f"deleted sale {args.sale_id}")
        return 0

    return run(args, body)


def cmd_watch(args: argparse.Namespace, _settings: object = None) -> int:
    from flashsale.cli.sales_watch import watch

    if args.interval <= 0:
        print(f"{PROG}: --interval must be above 0", file=sys.stderr)
        return 2
    return run(args, lambda api: watch(api, args.sale_id, interval_s=args.interval,
                                       once=args.once))  # fmt: skip


def confirm(question: str) -> bool:
    """Ask on the terminal; without one, refuse (a script says --yes)."""
    if not sys.stdin.isatty():
        raise UsageError(f"{question}\nstdin is not a terminal: give --yes to go ahead")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        print(f"{PROG}: nothing done", file=sys.stderr)
        return False
    return True


# -- what they print -----------------------------------------------------------------------------


def _print_warnings(answer: dict[str, Any]) -> None:
    for warning in answer.get("warnings", []):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)


def money(cents: int, currency: str) -> str:
    return f"{cents / 100:,.2f} {currency}"


def describe(sale: dict[str, Any]) -> str:
    lane = f" ({sale['fcode_stock']:,} for F-codes)" if sale.get("fcode_stock") else ""
    return (
        f"{sale['stock']:,} unit(s){lane} of {sale['sku']} at "
        f"{money(sale['price_cents'], sale['currency'])}, {sale['starts_at']} to "
        f"{sale['ends_at']}"
    )


_COLUMNS = ("sale_id", "status", "control", "starts_at", "ends_at", "stock", "available",
            "reserved", "paid")  # fmt: skip


def sales_table(sales: list[dict[str, Any]]) -> str:
    if not sales:
        return "no sales"
    rows = [[c.upper() for c in _COLUMNS]]
    rows += [[str(sale.get(c, "")) for c in _COLUMNS] for sale in sales]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    numeric = {_COLUMNS.index(c) for c in ("stock", "available", "reserved", "paid")}
    return "\n".join(
        "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    )


def render_show(sale: dict[str, Any], stats: dict[str, Any]) -> str:
    lines = [f"sale {sale['sale_id']}: {sale['name']}", f"  {describe(sale)}"]
    lines.append(f"  status {stats['status']} (control {stats['control']})")
    skip = {"sale_id", "name", "status", "control", "orders_in_postgres"}
    fields = [(k, v) for k, v in sale.items() if k not in skip]
    fields += [(k, v) for k, v in stats.items() if k not in skip and k not in sale]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        plain = isinstance(value, str | int | float) and not isinstance(value, bool)
        shown = value if plain else json.dumps(value)
        lines.append(f"  {key:<{width}}  {shown}")
    pg = stats.get("orders_in_postgres", {})
    lines.append("  orders in PostgreSQL: " + ", ".join(f"{k} {v}" for k, v in pg.items()))
    return "\n".join(lines)
