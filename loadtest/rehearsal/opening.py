"""When the crowd starts, and with it the sale (the driver's side of loadtest/start_gate.py).

A sale with an opening window is created to open an hour later too, and moved once the setup
is done (``move_opening``): a window that closed before the crowd came, as a setup that overran
a planned opening makes it (a 7.5 million bookings import on a busy machine), would rehearse
nothing of it.

Headless, the sale is created to open when the crowd can have gathered (``--start-in`` later
if given) and Locust starts on its own. With ``--web`` the crowd waits for Locust's Start
button (or starts by itself after ``--start-in``): the sale, created to open an hour later,
is moved to open a few seconds after the start, the time the crowd takes to gather. Every wait
says on the console what it waits for.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest import start_gate
from loadtest.rehearsal.api import Api
from loadtest.rehearsal.locust_run import start_from_web, web_state
from loadtest.rehearsal.options import Sizes
from loadtest.rehearsal.setup import sale_spec

PLACEHOLDER_S = 3600.0  # a sale that waits for the Start button opens this late at first
GATHER_S = 2.0  # beyond the ramp, from the start to the opening second
REMIND_S = 60.0  # say again what the crowd waits for this often

TIMES = ("starts_at", "ends_at", "booking_opens_at", "booking_closes_at", "fcode_release_at")


def opening_times(
    args: argparse.Namespace, sizes: Sizes, sale_id: str, opens_at: float, lottery_seed: str
) -> dict[str, Any]:
    """The sale's times for an opening at ``opens_at``, as the sale was created with them."""
    opens = datetime.fromtimestamp(opens_at, UTC)
    spec = sale_spec(args, sizes, sale_id, opens, lottery_seed)
    return {k: spec[k] for k in TIMES if k in spec}


def wait_for_start(
    record_dir: Path,
    *,
    web_url: str,
    start_in: float | None,
    users: int,
    spawn_rate: float,
    alive: Callable[[], bool],
    say: Callable[[str], None],
) -> float:
    """Until the crowd starts (the Start button, or ours after ``start_in`` seconds): when."""
    deadline = None if start_in is None else time.monotonic() + start_in
    say(
        f"Locust's web UI is at {web_url}/: the crowd waits for its Start button"
        + (f", or starts by itself in {start_in:.0f} s" if start_in is not None else "")
        + "; the sale opens a few seconds after the start"
    )
    remind = time.monotonic() + REMIND_S
    pushed = False
    while True:
        if (t := start_gate.started_at(record_dir)) is not None:
            return t
        if web_state(web_url) in ("spawning", "running"):  # a crowd without the gate file
            return time.time()
        if not alive():
            raise RuntimeError("Locust exited before its crowd started (see locust.log)")
        now = time.monotonic()
        if deadline is not None and now >= deadline and not pushed:
            pushed = start_from_web(web_url, users, spawn_rate)
            if pushed:
                say(f"--start-in {start_in:g}: the crowd starts now")
        if now >= remind:
            say(f"still waiting for the Start button at {web_url}/ (Ctrl-C gives up)")
            remind = now + REMIND_S
        time.sleep(0.1)


def open_now(
    api: Api,
    args: argparse.Namespace,
    sizes: Sizes,
    sale_id: str,
    lottery_seed: str,
    record_dir: Path,
    lead_s: float,
) -> float:
    """Move the sale's opening to the first whole second ``lead_s`` from now and tell the
    Locust processes: the opening (epoch s)."""
    opens_at = move_opening(api, args, sizes, sale_id, lottery_seed, lead_s)
    start_gate.set_opening(record_dir, opens_at)
    return opens_at


def move_opening(
    api: Api, args: argparse.Namespace, sizes: Sizes, sale_id: str, lottery_seed: str,
    lead_s: float,
) -> float:  # fmt: skip
    """Move the sale's opening (and every time that follows it) to the first whole second
    ``lead_s`` from now: the opening (epoch s)."""
    opens_at = float(math.ceil(time.time() + lead_s))
    times = opening_times(args, sizes, sale_id, opens_at, lottery_seed)
    api.call("PATCH", f"/v1/admin/sales/{sale_id}", times)
    return opens_at
