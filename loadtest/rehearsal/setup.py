"""Everything before the clock starts: the sale, the bulk booking import, the F-code campaign.

The import and the campaign go through the ``flashsale`` CLI, as an operator would run them.
"""

from __future__ import annotations

import argparse
import csv
import json
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from loadtest.rehearsal.api import Api
from loadtest.rehearsal.identities import write_booking_list
from loadtest.rehearsal.options import Sizes
from loadtest.rehearsal.processes import REPO, VENV_BIN

CAMPAIGN = "launch-vip"
# import rates through the CLI, list file included (bench-bookings measured 44,000/s for the
# import alone; the first full rehearsal 25,500/s, other work running). A queued sale refuses
# imports once it has started, so its estimate must not run short; an arrival sale takes
# them after its start, and a late setup only makes the crowd late
IMPORT_RATE_QUEUED = 15_000
IMPORT_RATE_ARRIVAL = 25_000


@dataclass
class SaleSetup:
    sale_id: str
    opens_at: float  # epoch seconds
    lottery_seed: str
    timings: dict[str, float] = field(default_factory=dict)
    imported: dict[str, Any] = field(default_factory=dict)
    fcodes: list[tuple[str, str]] = field(default_factory=list)  # (code, holder)
    campaign: str = CAMPAIGN  # the F-code campaign the crowd's codes belong to
    created_here: bool = True  # False: the operator's sale (--sale-id), never deleted here


def setup_seconds(args: argparse.Namespace, sizes: Sizes, lead_s: float) -> float:
    """From creating the sale to its start: the import, the campaign, Locust's start."""
    if args.setup_s is not None:
        return float(args.setup_s)
    rate = IMPORT_RATE_ARRIVAL if args.admission == "arrival" else IMPORT_RATE_QUEUED
    bookers = int(args.bookers)
    return 4.0 + 1.5 * bookers / 1_000_000 + bookers / rate + sizes.codes / 20_000 + lead_s


def opens_after_setup(args: argparse.Namespace) -> bool:
    """A sale created here is moved to open once the crowd can come: with --web when it
    starts, with an opening window when the setup is done."""
    return bool(not args.sale_id and (args.web or args.opening_window_ms))


def sale_spec(
    args: argparse.Namespace, sizes: Sizes, sale_id: str, opens: datetime, lottery_seed: str
) -> dict[str, Any]:
    """A launch like the Redmi one: booking required, a few units for F-code holders."""
    now = datetime.now(UTC)
    ends = opens + timedelta(hours=1)
    if opens_after_setup(args):
        # a sale that waits for the Start button or the end of the setup (opening.py) is
        # moved then, which a sale may only be before its booking opens: that opens a minute
        # before the sale, and the bulk import does not wait for it
        now = opens - timedelta(minutes=1)
    spec: dict[str, Any] = {
        "sale_id": sale_id,
        "sku": "redmi-note-rehearsal",
        "name": "Redmi Note (launch rehearsal)",
        "price_cents": 79_900,
        "stock": args.stock,
        "per_user_limit": args.per_user_limit,
        "starts_at": opens.isoformat(),
        "ends_at": ends.isoformat(),
        "reservation_ttl_s": args.reservation_ttl,
        "fcode_stock": sizes.fcode_stock,
        "booking_opens_at": now.isoformat(),
        # an arrival sale may take bookings until it ends; a queue is fixed at the start
        "booking_closes_at": (ends if args.admission == "arrival" else opens).isoformat(),
        "booking_required": True,
        "admission": args.admission,
    }
    if args.admission != "arrival":
        spec["admission_window_s"] = args.admission_window
    if args.admission == "lottery":
        spec["lottery_seed"] = lottery_seed
    if args.opening_window_ms:
        spec |= {"opening_window_ms": args.opening_window_ms,
                 "admission_window_s": args.admission_window}  # fmt: skip
    if args.fcode_release_after is not None and sizes.fcode_stock:
        spec["fcode_release_at"] = (opens + timedelta(seconds=args.fcode_release_after)).isoformat()
    return spec


def _flashsale(cli_args: list[str], env: dict[str, str], log: Path) -> str:
    """Run ``flashsale ARGS``; its stdout, or a failure with its output."""
    done = subprocess.run(
        [str(VENV_BIN / "flashsale"), *cli_args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    with log.open("a") as f:
        f.write(f"$ flashsale {' '.join(cli_args)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        raise RuntimeError(
            f"flashsale {cli_args[0]} {cli_args[1]} failed "
            f"(exit {done.returncode}): {done.stderr.strip()[-800:]}"
        )
    return done.stdout


def create_sale(
    api: Api, args: argparse.Namespace, sizes: Sizes, setup_s: float, lottery_seed: str
) -> SaleSetup:
    """The sale, opening ``setup_s`` from now (on a whole second: the opening second)."""
    sale_id = f"rehearsal-{secrets.token_hex(4)}"
    opens = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=round(setup_s) + 1)
    api.create_sale(sale_spec(args, sizes, sale_id, opens, lottery_seed))
    return SaleSetup(sale_id=sale_id, opens_at=opens.timestamp(), lottery_seed=lottery_seed)


def import_bookings(
    setup: SaleSetup, bookers: int, work: Path, env: dict[str, str], log: Path
) -> None:
    path = work / "bookers.txt"
    started = time.perf_counter()
    write_booking_list(path, bookers)
    out = _flashsale(["bookings", "import", setup.sale_id, str(path), "--json"], env, log)
    setup.timings["import_bookings_s"] = round(time.perf_counter() - started, 2)
    setup.imported = json.loads(out.strip().splitlines()[-1])
    path.unlink()  # 7.5 million lines that can be written again at will
    if setup.imported.get("new") != bookers:
        raise RuntimeError(f"the import booked {setup.imported.get('new')} of {bookers}")


def issue_fcodes(setup: SaleSetup, count: int, work: Path, env: dict[str, str], log: Path) -> None:
    if count == 0:
        return
    path = work / "fcodes.csv"
    started = time.perf_counter()
    _flashsale(
        [
            "fcodes",
            "issue",
            setup.sale_id,
            "--campaign",
            CAMPAIGN,
            "--count",
            str(count),
            "--out",
            str(path),
        ],
        env,
        log,
    )
    setup.timings["issue_fcodes_s"] = round(time.perf_counter() - started, 2)
    with path.open(newline="") as f:
        codes = [row["code"] for row in csv.DictReader(f)]
    # bearer codes, handed to fans who never booked: F-codes skip the queue
    setup.fcodes = [(code, f"fcode-fan-{i}") for i, code in enumerate(codes)]
