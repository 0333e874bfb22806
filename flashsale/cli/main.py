"""``flashsale``: serve the API, run the order writer, mint tokens, run a demo sale, create and
run sales, F-codes, import and export bookings, reconcile Redis with PostgreSQL, see events
PostgreSQL refused, relay order events to the shop and watch their delivery, check a machine
before a sale (doctor)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from flashsale import __version__
from flashsale.settings import Settings, SettingsError


def _new_event_loop() -> asyncio.AbstractEventLoop:
    from flashsale.cli.serve import new_event_loop

    return new_event_loop()


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.cli.serve import serve_one, serve_supervised

    if args.workers < 1:
        print("flashsale: --workers must be at least 1", file=sys.stderr)
        return 2
    from flashsale.checks import serve_refusal

    refusal = serve_refusal(settings)  # the secrets, and Redis's eviction policy
    if refusal is not None:
        print(f"flashsale serve: {refusal}", file=sys.stderr)
        return 2
    if args.single_process:
        if args.workers != 1:
            print("flashsale: --single-process runs one worker", file=sys.stderr)
            return 2
        if settings.metrics and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from flashsale.metrics import multiprocess

            multiprocess.prepare()  # files of an earlier run would add to this one's counts
        serve_one(settings, args.host, args.port, verbose=args.verbose)
        return 0
    from flashsale.cli.db import prepare_schema

    prepare_schema(settings)  # once, before the workers: a schema too new ends serve here
    return serve_supervised(settings, args.host, args.port, args.workers, args.verbose)


def cmd_writer(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.cli.writer import run_writer

    loop = _new_event_loop()
    try:
        loop.run_until_complete(run_writer(settings))
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.auth import issue_token

    if not os.environ.get("FLASHSALE_TOKEN_SECRET"):
        print("FLASHSALE_TOKEN_SECRET is not set: the service would not accept this token",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.count is not None or args.users is not None or args.out is not None:
        from flashsale.cli.tokens import mint_many

        return mint_many(args, settings)
    if args.user_id is None:
        print("flashsale token: give a USER_ID, or --count N / --users FILE", file=sys.stderr)
        return 2
    print(issue_token(settings.token_secret, args.user_id, ttl_s=args.ttl))
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.cli.demo import run_demo
    from flashsale.payments.simulator import PaymentMix, Shares

    try:
        shares = Shares(
            late=args.late_share,
            repeated=args.repeat_share,
            paid_again=args.paid_again_share,
            wrong_amount=args.wrong_amount_share,
        )
    except ValueError as exc:
        print(f"flashsale demo: {exc}", file=sys.stderr)
        return 2
    if not 1 <= args.reservation_ttl <= 86_400:
        print("flashsale demo: --reservation-ttl is 1 to 86400 seconds", file=sys.stderr)
        return 2
    loop = _new_event_loop()
    try:
        return loop.run_until_complete(
            run_demo(settings, stock=args.stock, shoppers=args.shoppers,
                     concurrency=args.concurrency, pay_share=args.pay_share,
                     admission=args.admission, no_show_share=args.no_show_share,
                     window_s=args.window, reservation_ttl_s=args.reservation_ttl,
                     opening_window_ms=args.opening_window_ms,
                     mix=PaymentMix(seed=args.seed, shares=shares))
        )  # fmt: skip
    finally:
        loop.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashsale", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="serve the HTTP API (with the order writer and sweeper)",
        description="Serve the HTTP API, with the order writer and the sweeper. Needs "
        "FLASHSALE_TOKEN_SECRET and FLASHSALE_ADMIN_TOKEN, and a Redis whose "
        "maxmemory-policy is noeviction (FLASHSALE_ALLOW_EVICTION=1 to start anyway): "
        "otherwise it refuses to start, with exit code 2. `flashsale doctor` checks all this "
        "beforehand.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on")
    serve.add_argument("--workers", type=int, default=1,
                       help="HTTP processes on one port (SO_REUSEPORT); one a core")  # fmt: skip
    serve.add_argument("--single-process", action="store_true",
                       help="HTTP, order writer and sweeper in this one process")  # fmt: skip
    serve.set_defaults(func=cmd_serve)

    writer = sub.add_parser("writer", help="run the Redis-to-PostgreSQL order writer alone")
    writer.set_defaults(func=cmd_writer)

    from flashsale.cli.tokens import add_token_arguments

    token = sub.add_parser(
        "token",
        help="print a shopper token, or many (needs FLASHSALE_TOKEN_SECRET)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_token_arguments(token)
    token.set_defaults(func=cmd_token)

    demo = sub.add_parser("demo", help="run a whole sale against a crowd and report it")
    demo.add_argument("--stock", type=int, default=1000)
    demo.add_argument("--shoppers", type=int, default=5000)
    demo.add_argument("--concurrency", type=int, default=200)
    demo.add_argument("--pay-share", type=float, default=0.8,
                      help="share of winners who pay (others cancel or let it expire)")  # fmt: skip
    demo.add_argument("--admission", choices=["arrival", "booking_order", "lottery"],
                      help="book first, then buy through this booking queue")  # fmt: skip
    demo.add_argument("--no-show-share", type=float, default=0.1,
                      help="with --admission: share of booked shoppers who never come")  # fmt: skip
    demo.add_argument("--window", type=int, default=2,
                      help="with --admission or an opening window: seconds an admitted shopper "
                      "has to buy")  # fmt: skip
    demo.add_argument("--opening-window-ms", type=int, default=2000,
                      help="arrival sales (no --admission, or arrival): buyers from this long "
                      "before the start to this long after get a ticket and are put in a random "
                      "order at its end (0: first come, first served)")  # fmt: skip
    demo.add_argument("--reservation-ttl", type=int, default=5,
                      help="seconds a reservation lasts (late payments wait it out)")  # fmt: skip
    demo.add_argument("--late-share", type=float, default=0.05,
                      help="of the payments, those sent after the reservation expired")  # fmt: skip
    demo.add_argument("--repeat-share", type=float, default=0.05,
                      help="of the payments, those delivered twice (one webhook-id)")  # fmt: skip
    demo.add_argument("--paid-again-share", type=float, default=0.05,
                      help="of the payments, those sent again under a new webhook-id")  # fmt: skip
    demo.add_argument("--wrong-amount-share", type=float, default=0.02,
                      help="of the payments, those charged a wrong amount first")  # fmt: skip
    demo.add_argument("--seed", type=int, default=7,
                      help="seed of the payment service's choices")  # fmt: skip
    demo.set_defaults(func=cmd_demo)

    from flashsale.cli.fcodes import add_fcodes_parser

    add_fcodes_parser(sub)
    from flashsale.cli.bookings import add_bookings_parser

    add_bookings_parser(sub)
    from flashsale.cli.reconcile import add_reconcile_parser

    add_reconcile_parser(sub)
    from flashsale.cli.db import add_db_parser

    add_db_parser(sub)
    from flashsale.cli.deadletters import add_deadletters_parser

    add_deadletters_parser(sub)
    from flashsale.cli.opening import add_opening_parser

    add_opening_parser(sub)
    from flashsale.cli.events import add_events_parser, add_relay_parser

    add_relay_parser(sub)
    add_events_parser(sub)
    from flashsale.cli.sales import add_sales_parser

    add_sales_parser(sub)
    from flashsale.cli.doctor import add_doctor_parser

    add_doctor_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from flashsale.logs import setup_logging

    setup_logging(args.verbose)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"flashsale: {exc}", file=sys.stderr)
        return 2
    try:
        code: int = args.func(args, settings)
    except Exception as exc:
        # imported only now: most commands never load the PostgreSQL side
        from flashsale.store.migrate import SchemaError

        if not isinstance(exc, SchemaError):
            raise
        print(f"flashsale: {exc}", file=sys.stderr)  # e.g. a schema newer than this flashsale
        return exc.exit_code
    return code


if __name__ == "__main__":
    sys.exit(main())
