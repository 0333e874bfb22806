"""The rehearsal's command line, its presets, and the sizes derived from them."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

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
    },
    # the same launch, small enough to run end to end in well under a minute
    "small": {
        "stock": 2000,
        "bookers": 20_000,
        "users": 200,
        "ramp": 1.0,
        "drain": 2.0,
        "max": 30.0,
        "checkout": 1.5,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="launch-rehearsal",
        description="Set up a launch-sized sale, send a Locust crowd at it, judge the result.",
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
        default=5,
        help="queued admissions: seconds an admitted shopper has to buy",
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
    p.add_argument("--web", action="store_true", help="Locust's web UI instead of headless")
    p.add_argument("--web-port", type=int, default=8089)
    p.add_argument(
        "--setup-s",
        type=float,
        help="seconds from creating the sale to its start (default: estimated)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the throwaway database and Redis keys this run created",
    )
    p.add_argument("--seed", type=int, default=7, help="seed of the crowd's choices")
    args = p.parse_args(argv)
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, type(value)(value))
    args.stock, args.bookers, args.users = int(args.stock), int(args.bookers), int(args.users)
    if args.stock < 1 or args.bookers < 1 or args.users < 4:
        p.error("--stock and --bookers must be positive, --users at least 4")
    return args


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

    @property
    def tokens(self) -> int:
        return self.buyers + self.pollers + self.walk_ins + self.codes


def sizes(args: argparse.Namespace) -> Sizes:
    fcode_stock = math.ceil(args.stock * args.fcode_share) if args.fcode_share > 0 else 0
    codes = math.ceil(fcode_stock * 1.25)
    pollers = min(args.bookers // 10, max(200, args.users * 5))
    # every unit needs a winner; then shoppers who find it sold out, a few hundred a second
    wanted = math.ceil((args.stock - fcode_stock) * 1.5) + args.users * 20
    no_shows = math.ceil(args.stock * args.no_show_share) if args.admission != "arrival" else 0
    buyers = max(1, min(args.bookers - pollers - no_shows, wanted))
    return Sizes(
        fcode_stock=fcode_stock,
        codes=codes,
        buyers=buyers,
        no_shows=min(no_shows, max(0, args.bookers - pollers - buyers)),
        pollers=pollers,
        walk_ins=math.ceil(buyers * args.walk_in_share * 2) + 10,
        fcode_users=min(codes, max(1, args.users // 20)) if codes else 0,
        bot_users=min(args.bots if args.bots is not None else args.users // 20, args.users // 4),
    )
