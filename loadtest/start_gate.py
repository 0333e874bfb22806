"""The opening of a sale that waits for its crowd (``--web``: Locust's Start button).

With a plan that ``opens_on_start``, the sale was created to open much later, and the crowd
decides when: the Locust process that owns the load shape (local or master) writes
``started.json`` in the record directory when its test starts (the Start button, or the
driver's own start after ``--start-in``); the driver then moves the sale's opening to a few
seconds ahead (time for the crowd to gather), and writes ``opening.json``; every Locust
process waits for it when its test starts and takes the opening from it. A file, not a Locust
message: the driver is not a Locust process, and every Locust process reads the record
directory already.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

STARTED = "started.json"
OPENING = "opening.json"


def _write(path: Path, data: dict[str, float]) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(data))
    os.replace(part, path)  # whole or not at all, for a reader polling it


def announce_start(record_dir: str | Path) -> None:
    """The crowd has started (in the process that owns the load shape)."""
    Path(record_dir).mkdir(parents=True, exist_ok=True)
    _write(Path(record_dir) / STARTED, {"t": time.time()})


def started_at(record_dir: str | Path) -> float | None:
    try:
        return float(json.loads((Path(record_dir) / STARTED).read_text())["t"])
    except (OSError, ValueError, KeyError):
        return None


def set_opening(record_dir: str | Path, opens_at: float) -> None:
    """The driver's answer: the sale now opens at ``opens_at`` (epoch s)."""
    _write(Path(record_dir) / OPENING, {"opens_at": opens_at})


def opening(record_dir: str | Path) -> float | None:
    try:
        return float(json.loads((Path(record_dir) / OPENING).read_text())["opens_at"])
    except (OSError, ValueError, KeyError):
        return None


def wait_for_opening(
    record_dir: str | Path,
    timeout_s: float = 60.0,
    sleep: Callable[[float], object] = time.sleep,
) -> float:
    """The opening the driver set, waiting for it (a Locust process passes gevent's sleep)."""
    deadline = time.monotonic() + timeout_s
    while (opens_at := opening(record_dir)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no opening in {Path(record_dir) / OPENING} after {timeout_s:.0f} s: the "
                "rehearsal's driver sets it when the crowd starts"
            )
        sleep(0.05)
    return opens_at
