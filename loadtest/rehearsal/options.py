"""The rehearsal's command line, its presets, and the sizes derived from them."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

from flashsale.payments.simulator import Shares

# preset -> defaults; any option given on the command line wins
PRESETS: dict[str, dict[str, float]] = {
    # the Redmi-style launch: 100,000 units, 7.5 million booked fans
    "full": {
        "stock": 100_000,
        "bookers": 7_500_000,
        # more users only queue longer: 300 already keep these two cores busy
        "users": 300,
        "ramp": 2.0,
        "drain": 3.0,
        "max": 300.0,
        "checkout": 1.5,
        # longer than the sale takes, so unpaid units do not come back during it
        "reservation_ttl": 120.0,
        # the crowd of the opening seconds (the bots from a second before) gets tickets
        "opening_window_ms": 10_000,
        # the F-code units nobody redeemed pass to the public a minute in: every unit sells
        "fcode_release_after": 60.0,
    },
    # the same launch, small enough to run end to end in about a minute
    "small": {
        "stock": 2000,
        "bookers": 20_000,
        "users": 200,
        "ramp": 1.0,
        "drain": 2.0,
        # the window's 10 s, and the crowd of its draw coming back at once, on a busy machine
        "max": 45.0,
        "checkout": 1.5,
        "reservation_ttl": 30.0,
        "opening_window_ms": 10_000,
        "fcode_release_after": 15.0,
    },
}
# an opening window's admitted shopper has this long to buy: longer than the crowd at the
# window's draw takes to come back (a booking queue's places pass on after --admission-window)
OPENING_ADMISSION_WINDOW_S = 30


DESCRIPTION = """\
Set up a launch-sized sale (bookings imported in bulk, an F-code campaign, tokens for the
shoppers the crowd will use; or take one the operator made: --sale-id), send a Locust crowd at
it from the opening second, then print and write a report (report.json, chart.png) with a
verdict.

The headline is the sale window, from the opening second to the last unit (times by the
service's clock: the orders in PostgreSQL): time to sell out, buys/s, requests/s, buy p50/p95/
p99; the whole run's figures come second. `bottleneck` names the component that was saturated
over the sale window (service, load generator, redis, postgres), or none / unknown, with the
CPU of each component (sampled every 0.1 s) as its evidence.
"""

EPILOG = """\
examples:
  scripts/launch-rehearsal --preset small --out out/rehearsal-small      # about 1 min
  scripts/launch-rehearsal --stock 100000 --bookers 7500000 --out out/rehearsal-full
  scripts/launch-rehearsal --preset small --web --out out/rehearsal-web  # press Start
  scripts/launch-rehearsal --service http://127.0.0.1:8080 --sale-id redmi-13 \\
      --fcodes redmi-13-codes.csv --out out/redmi-13

servers: the usual FLASHSALE_* variables (FLASHSALE_REDIS_URL, FLASHSALE_DATABASE_URL,
  FLASHSALE_KEY_PREFIX, FLASHSALE_TOKEN_SECRET, FLASHSALE_ADMIN_TOKEN, FLASHSALE_PAYMENT_SECRET,
  FLASHSALE_SERVICE_URL). Unset, the local Redis with a fresh key prefix and a fresh database on
  the local PostgreSQL are used, and removed at the end. A sale the rehearsal created in stores
  it did not make (--service) is removed from them at the end; --keep keeps it, and says so.

exit codes: 0 every invariant held and the sale sold out as planned; 1 a violation, a failed
  expectation (a sale the plan expected to sell out that did not), or a rehearsal that could
  not run; 2 usage. scripts/launch-rehearsal also takes --no-install (skip ./scripts/install).
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="launch-rehearsal",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--out", required=True, help="directory for the report, chart and logs")
    p.add_argument("--stock", type=int, help="units on sale")
    p.add_argument("--bookers", type=int, help="booked shoppers, imported in bulk")
    p.add_argument(
        "--admission", choices=["arrival", "booking_order", "lottery"], default="arrival"
    )
    p.add_argument(
        "--admission-window",
        type=int,
        help="queued admissions and an opening window: seconds an admitted shopper has to buy "
        f"(default 5 in a booking queue, {OPENING_ADMISSION_WINDOW_S} with an opening window)",
    )
    p.add_argument(
        "--opening-window-ms",
        type=int,
        help="admission arrival: the sale's opening window (buyers from this long before the "
        "start to this long after get a ticket, then a random order); 0: none (default: the "
        "preset's, 10000; none for a booking queue)",
    )
    p.add_argument(
        "--fcode-release-after",
        type=float,
        metavar="S",
        help="the F-code units nobody redeemed pass to the public this many seconds after the "
        "opening (the sale's fcode_release_at); default: the preset's (full 60, small 15); "
        "a negative value: never",
    )
    p.add_argument("--per-user-limit", type=int, default=1)
    p.add_argument(
        "--fcode-share",
        type=float,
        default=0.01,
        help="share of the stock set aside for F-code holders",
    )
    p.add_argument("--users", type=int, help="Locust users at full strength")
    p.add_argument("--ramp", type=float, help="seconds to bring in the whole crowd")
    p.add_argument("--drain", type=float, help="seconds the crowd stays after the sell-out")
    p.add_argument("--max", type=float, help="longest sale in seconds, sold out or not")
    p.add_argument("--pay-share", type=float, default=0.9, help="winners who pay")
    p.add_argument(
        "--checkout",
        type=float,
        help="a paying winner pays within this many seconds of the 201 (uniformly from 0.2 s)",
    )
    p.add_argument(
        "--bots",
        type=int,
        help="of the users, scalpers' scripts: many accounts, no pause, guessed F-codes "
        "(default: one in twenty)",
    )
    p.add_argument(
        "--bot-accounts",
        type=int,
        default=20,
        help="booked accounts each bot owns and goes through in turn for the whole sale",
    )
    p.add_argument(
        "--reservation-ttl",
        type=int,
        help="seconds a reservation lasts; the late payments, and the rest of the verdict, "
        "wait for the last one to pass",
    )
    p.add_argument(
        "--late-share",
        type=float,
        default=0.05,
        help="of the payments, those the payment service sends after the reservation expired",
    )
    p.add_argument(
        "--repeat-share",
        type=float,
        default=0.05,
        help="of the payments, those whose notification is delivered twice (one webhook-id)",
    )
    p.add_argument(
        "--paid-again-share",
        type=float,
        default=0.05,
        help="of the payments, those notified again under a new webhook-id",
    )
    p.add_argument(
        "--wrong-amount-share",
        type=float,
        default=0.02,
        help="of the payments, those charged a wrong amount first (then the right one)",
    )
    p.add_argument(
        "--events-wait",
        type=float,
        default=120.0,
        help="seconds to wait for the last order event once PostgreSQL holds every order",
    )
    p.add_argument(
        "--double-click-share", type=float, default=0.05, help="winners who press buy again"
    )
    p.add_argument(
        "--walk-in-share", type=float, default=0.02, help="attempts by shoppers who never booked"
    )
    p.add_argument(
        "--no-show-share",
        type=float,
        default=0.05,
        help="queued admissions: admitted shoppers who never come",
    )
    p.add_argument(
        "--service",
        default=os.environ.get("FLASHSALE_SERVICE_URL"),
        help="a running service (default: FLASHSALE_SERVICE_URL, else start one)",
    )
    p.add_argument(
        "--service-workers",
        type=int,
        help="processes of the service started here (default 2 if it can)",
    )
    p.add_argument(
        "--locust-workers",
        type=int,
        default=0,
        help="run Locust distributed: a master and this many workers",
    )
    p.add_argument(
        "--web",
        action="store_true",
        help="Locust's web UI instead of headless: the crowd waits for its Start button (the "
        "sale opens a few seconds after it), or for --start-in",
    )
    p.add_argument("--web-port", type=int, default=8089)
    p.add_argument(
        "--start-in",
        type=float,
        metavar="SECONDS",
        help="start the crowd this long after the setup is done (with --web: unless Start is "
        "pressed before); default: at once, or with --web on the Start button only",
    )
    p.add_argument(
        "--sale-id",
        help="rehearse this existing sale of a running service (--service) instead of "
        "creating one: its stock, bookings and opening; tokens are minted for its booked "
        "shoppers; nothing of it is deleted afterwards",
    )
    p.add_argument(
        "--fcodes",
        metavar="FILE",
        help="with --sale-id: the sale's F-codes, the CSV `flashsale fcodes issue --out` wrote "
        "(without it the F-code units cannot be bought)",
    )
    p.add_argument(
        "--setup-s",
        type=float,
        help="seconds from creating the sale to its start (default: estimated)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep what this run created (a throwaway database and key prefix, or its sale "
        "in the stores of a running service), and say what was kept",
    )
    p.add_argument("--seed", type=int, default=7, help="seed of the crowd's choices")
    args = p.parse_args(argv)
    queue = args.admission != "arrival"
    if queue and args.opening_window_ms:
        p.error("--opening-window-ms is for --admission arrival (a booking queue has its order)")
    if queue or args.sale_id:  # a queue has its order; the operator's sale its own window
        args.opening_window_ms = 0
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, type(value)(value))
    args.stock, args.bookers, args.users = int(args.stock), int(args.bookers), int(args.users)
    args.reservation_ttl = int(args.reservation_ttl)
    args.opening_window_ms = int(args.opening_window_ms)
    if args.fcode_release_after < 0:
        args.fcode_release_after = None
    if args.admission_window is None:
        args.admission_window = OPENING_ADMISSION_WINDOW_S if args.opening_window_ms else 5
    if args.bot_accounts < 1:
        p.error("--bot-accounts is 1 or more")
    if args.stock < 1 or args.bookers < 1 or args.users < 4:
        p.error("--stock and --bookers must be positive, --users at least 4")
    if not 1 <= args.reservation_ttl <= 86_400:
        p.error("--reservation-ttl is 1 to 86400 seconds")
    if args.sale_id and not args.service:
        p.error("--sale-id needs --service URL (or FLASHSALE_SERVICE_URL): the running "
                "service that holds the sale")  # fmt: skip
    if args.fcodes and not args.sale_id:
        p.error("--fcodes goes with --sale-id (a sale created here issues its own codes)")
    if args.start_in is not None and not 0 <= args.start_in <= 86_400:
        p.error("--start-in is 0 to 86400 seconds")
    if args.locust_workers < 0:
        p.error("--locust-workers is 0 (one Locust process) or more")
    try:
        payment_shares(args)
    except ValueError as exc:
        p.error(str(exc))
    return args


# the crowd of a sale's opening: booked shoppers a public unit who come within its window, so
# that the window's draw decides (a launch draws many more fans than phones: this many keep
# the share each account wins measurable), but no more a second than a user can bring
OPENING_CROWD_PER_UNIT = 1.3
OPENING_ARRIVALS_PER_USER_S = 4.0


def opening_shoppers_per_user(args: argparse.Namespace, n: Sizes) -> int:
    """With an opening window: the booked shoppers each booked Locust user brings while it is
    open (from its arrival at the opening to half a second before the draw)."""
    if not args.opening_window_ms:
        return 0
    # Locust's weights: 9 booked users to 1 late arrival, besides the fixed counts
    booked_users = max(1, round((args.users - n.fcode_users - n.bot_users) * 0.9))
    wanted = math.ceil((args.stock - n.fcode_stock) * OPENING_CROWD_PER_UNIT / booked_users)
    arrival_s = max(0.0, args.opening_window_ms / 1000 - 0.2)
    return max(1, min(wanted, math.floor(arrival_s * OPENING_ARRIVALS_PER_USER_S)))


def payment_shares(args: argparse.Namespace) -> Shares:
    return Shares(
        late=args.late_share,
        repeated=args.repeat_share,
        paid_again=args.paid_again_share,
        wrong_amount=args.wrong_amount_share,
    )


@dataclass(frozen=True)
class Sizes:
    """How many of each kind of shopper the crowd needs. Tokens are minted for these only:
    the crowd never gets through 7.5 million shoppers, so minting them all would be waste."""

    fcode_stock: int
    codes: int  # F-codes issued: a few more than their units, so some holders find none left
    buyers: int  # booked identities the crowd may use
    no_shows: int  # queued admissions: admitted places nobody claims (they pass on)
    pollers: int  # booked late arrivals
    walk_ins: int  # unbooked
    fcode_users: int
    bot_users: int
    bot_accounts: int = 0  # of every bot together: booked, not among the buyers

    @property
    def tokens(self) -> int:
        return self.buyers + self.pollers + self.walk_ins + self.codes + self.bot_accounts


def sizes(args: argparse.Namespace) -> Sizes:
    fcode_stock = math.ceil(args.stock * args.fcode_share) if args.fcode_share > 0 else 0
    codes = math.ceil(fcode_stock * 1.25)
    pollers = min(args.bookers // 10, max(200, args.users * 5))
    # every unit needs a winner; then shoppers who find it sold out, a few hundred a second
    wanted = math.ceil((args.stock - fcode_stock) * 1.5) + args.users * 20
    no_shows = math.ceil(args.stock * args.no_show_share) if args.admission != "arrival" else 0
    bot_users = min(args.bots if args.bots is not None else args.users // 20, args.users // 4)
    bot_accounts = min(bot_users * args.bot_accounts, args.bookers // 10)
    buyers = max(1, min(args.bookers - pollers - no_shows - bot_accounts, wanted))
    return Sizes(
        fcode_stock=fcode_stock,
        codes=codes,
        buyers=buyers,
        no_shows=min(no_shows, max(0, args.bookers - pollers - buyers)),
        pollers=pollers,
        walk_ins=math.ceil(buyers * args.walk_in_share * 2) + 10,
        fcode_users=min(codes, max(1, args.users // 20)) if codes else 0,
        bot_users=bot_users,
        bot_accounts=bot_accounts,
    )
