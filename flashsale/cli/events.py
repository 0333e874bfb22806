"""``flashsale relay`` and ``flashsale events status|redeliver``: order events for the shop.

``relay`` delivers the outbox's events to FLASHSALE_WEBHOOK_URLS until stopped (``serve``
runs one itself when the variable is set).

``events status`` shows each receiver: its backlog (events not yet delivered to it), the age
of the oldest of them, whether it is failing or disabled, and how many events were given up.
Exit codes: 0 all well, 1 a receiver of FLASHSALE_WEBHOOK_URLS (of all, when it is not set) is
failing or disabled or has events given up, 2 usage.

``events redeliver --since TIME`` sends every event recorded since TIME again (delivered and
given up ones too), to every receiver or the one named with ``--receiver``; naming a disabled
receiver enables it again. TIME is an ISO 8601 time (UTC unless it says otherwise) or a
duration back from now: ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m``. Exit codes: 0 done,
1 failed, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from flashsale.cli.common import UsageError, run_job

if TYPE_CHECKING:
    import asyncpg

    from flashsale.engine.engine import Engine
    from flashsale.outbox.receivers import ReceiverStatus
    from flashsale.settings import Settings

PROG = "flashsale events"

_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")


def add_relay_parser(sub: Any) -> None:
    relay = sub.add_parser(
        "relay", help="deliver order events to FLASHSALE_WEBHOOK_URLS (serve runs one itself)"
    )
    relay.set_defaults(func=cmd_relay)


def add_events_parser(sub: Any) -> None:
    events = sub.add_parser(
        "events",
        help="order events: the receivers' backlog, and sending events again",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    esub = events.add_subparsers(dest="events_command", required=True)
    status = esub.add_parser("status", help="backlog, failing and disabled receivers; "
                             "exit 1 when one needs attention")  # fmt: skip
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=cmd_status)
    redeliver = esub.add_parser(
        "redeliver", help="send the events since a time again (enables a disabled receiver)"
    )
    redeliver.add_argument(
        "--since", required=True, help="ISO 8601 time, or a duration back from now: 30m, 2h, 1d"
    )
    redeliver.add_argument("--receiver", metavar="URL",
                           help="only this receiver (enabled again if disabled)")  # fmt: skip
    redeliver.set_defaults(func=cmd_redeliver)


def cmd_relay(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.cli.relay import run_relay
    from flashsale.cli.serve import new_event_loop

    if not settings.webhook_urls:
        print("flashsale relay: FLASHSALE_WEBHOOK_URLS is not set: nowhere to deliver",
              file=sys.stderr)  # fmt: skip
        return 2
    loop = new_event_loop()
    main = loop.create_task(run_relay(settings))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, main.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main)
    finally:
        loop.close()
    return 0


def parse_since(text: str, now: datetime) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or a duration back from ``now``."""
    match = _DURATION.fullmatch(text.strip())
    if match is not None and any(match.groups()):
        d, h, m, s = (int(g or 0) for g in match.groups())
        return now - timedelta(days=d, hours=h, minutes=m, seconds=s)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--since: {text!r} is neither an ISO 8601 time nor a duration such as 30m, 2h, 1d"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.outbox import receivers

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        found = await receivers.status(pool, settings.webhook_urls)
        # receivers no longer configured are shown, but no relay serves them any more
        served = [r for r in found if r.configured] or found
        attention = any(r.needs_attention for r in served)
        if args.json:
            print(json.dumps({
                "receivers": [r.to_json() for r in found],
                "oldest_undelivered_age_s": max(
                    (r.oldest_undelivered_age_s for r in served
                     if r.oldest_undelivered_age_s is not None), default=None),
                "needs_attention": attention,
            }, indent=2))  # fmt: skip
        else:
            _print_status(found)
        return 1 if attention else 0

    return run_job(settings, job, PROG)


def _print_status(found: list[ReceiverStatus]) -> None:
    if not found:
        print("no webhook receivers (FLASHSALE_WEBHOOK_URLS is not set)")
        return
    for r in found:
        state = r.state
        if r.disabled_at is not None:
            state += f" since {r.disabled_at.isoformat()}: {r.disabled_reason}"
        elif r.failing_since is not None:
            state += f" since {r.failing_since.isoformat()}: {r.last_error}"
        if not r.configured:
            state += " (not in FLASHSALE_WEBHOOK_URLS)"
        print(f"{r.url}  {state}")
        oldest = (
            ""
            if r.oldest_undelivered_age_s is None
            else f", the oldest {r.oldest_undelivered_age_s:.1f} s old"
        )
        print(f"  backlog {r.backlog} event(s){oldest}; delivered {r.delivered}; "
              f"given up {r.given_up}")  # fmt: skip


def cmd_redeliver(args: argparse.Namespace, settings: Settings) -> int:
    from flashsale.outbox import receivers

    async def job(pool: asyncpg.Pool, engine: Engine) -> int:
        since = parse_since(args.since, datetime.now(UTC))
        known = {r.url: r for r in await receivers.status(pool, settings.webhook_urls)}
        if args.receiver is not None:
            if args.receiver not in known:
                raise UsageError(
                    f"{args.receiver!r} is not a receiver (not in FLASHSALE_WEBHOOK_URLS, "
                    "and never was one)"
                )
            targets = [args.receiver]
        else:
            targets = [url for url, r in known.items() if r.configured]
            if not targets:
                raise UsageError("FLASHSALE_WEBHOOK_URLS is not set: name a --receiver")
        for url in targets:
            was_disabled = known[url].disabled_at is not None
            enable = args.receiver is not None
            queued = await receivers.redeliver(pool, url, since, enable=enable)
            note = ""
            if was_disabled:
                note = (" (enabled again)" if enable
                        else " (disabled: name it with --receiver to enable it)")  # fmt: skip
            print(f"{url}: {queued} event(s) since {since.isoformat()} queued again{note}")
        return 0

    return run_job(settings, job, PROG)
