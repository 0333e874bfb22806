"""Shopper identities: pre-minted tokens the driver wrote, handed out to the Locust processes.

Each pool file holds one identity a line: ``user_id token`` (and ``code`` for F-code holders),
in the order the crowd should take them (for a queued sale, front of the queue first).

The Locust processes share each pool through a claim counter beside it (``<name>.next``, read
and advanced under an exclusive file lock): a process that needs identities claims the next
block of lines, so every line goes to exactly one process, together they go through the whole
pool, and the front of the pool goes first whichever process asks. A fixed split by process
(lines ``i, i + n, ...`` to process ``i``) is not enough: Locust places users on its workers
by class, unevenly (with 2 workers, 10 F-code holders and 10 bots, every F-code holder ran on
one worker), and the lines of a process that runs no user of a pool were never used. The
processes must share the pool directory (they are on one machine, or it is a shared one).
"""

from __future__ import annotations

import fcntl
import os
import threading
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BUYERS = "buyers"  # booked shoppers, one account each
WALK_INS = "walk_ins"  # shoppers who never booked
POLLERS = "pollers"  # booked shoppers who arrive late and watch
FCODE_HOLDERS = "fcode_holders"  # one F-code each; not booked (F-codes skip the queue)
BOT_ACCOUNTS = "bot_accounts"  # the scalpers' booked accounts: each bot owns a fixed few
POOLS = (BUYERS, WALK_INS, POLLERS, FCODE_HOLDERS, BOT_ACCOUNTS)

MAX_BLOCK = 32  # lines claimed at once at most: one lock a few dozen shoppers
BLOCKS_PER_PROCESS = 8  # a small pool is claimed in blocks small enough to go round


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    token: str
    code: str = ""  # the F-code this shopper holds

    @property
    def headers(self) -> dict[str, str]:
        # every request of the crowd that has a body sends JSON (an empty object, mostly)
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}


def pool_path(pool_dir: str | Path, name: str) -> Path:
    return Path(pool_dir) / f"{name}.txt"


def counter_path(pool_dir: str | Path, name: str) -> Path:
    return Path(pool_dir) / f"{name}.next"


def write_pool(pool_dir: str | Path, name: str, rows: Iterator[tuple[str, ...]]) -> int:
    """Write identities (user, token[, code]) one a line, with a claim counter at 0; how many."""
    count = 0
    with pool_path(pool_dir, name).open("w") as f:
        for row in rows:
            f.write(" ".join(row))
            f.write("\n")
            count += 1
    counter_path(pool_dir, name).write_text("0\n")
    return count


def claim(pool_dir: str | Path, name: str, count: int) -> int:
    """Claim the next ``count`` lines of a pool for this process: the first one's number
    (numbers run on past the pool's end; a pool that wraps takes them modulo its size)."""
    fd = os.open(counter_path(pool_dir, name), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        first = int(os.pread(fd, 32, 0).decode().strip() or 0)
        data = f"{first + count}\n".encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        return first
    finally:
        os.close(fd)  # and the lock with it


def block_size(size: int, processes: int) -> int:
    """Lines a process claims at a time: up to MAX_BLOCK, fewer for a small pool, 1 at least."""
    return max(1, min(MAX_BLOCK, size // (BLOCKS_PER_PROCESS * max(1, processes))))


def line_offsets(path: Path) -> array[int]:
    """Where each line of a file starts, and the file's end."""
    offsets = array("q", [0])
    with path.open("rb") as f:
        for line in f:
            offsets.append(offsets[-1] + len(line))
    return offsets


class Pool:
    """One pool as a process sees it. ``take`` hands out identities this process claimed, one
    at a time; when the pool is used up, a pool that may ``wrap`` starts again from the first
    line (those shoppers come back: the service must answer them as returning shoppers, e.g.
    ``limit_reached``), any other gives None."""

    def __init__(self, pool_dir: str | Path, name: str, *, processes: int, wrap: bool) -> None:
        self.pool_dir, self.name, self._wrap = pool_dir, name, wrap
        path = pool_path(pool_dir, name)
        self._path = path
        self._offsets = line_offsets(path) if path.exists() else array("q", [0])
        self._block = block_size(len(self), processes)
        # claimed and not yet handed out, last first: (number claimed, its identity)
        self._claimed: list[tuple[int, Identity]] = []
        self._used_up = False
        self.taken = 0  # identities handed out by this process
        self.reused = 0  # of which a second time or more (the pool wrapped)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def take(self) -> Identity | None:
        if not self._claimed and not self._claim():
            return None
        number, identity = self._claimed.pop()
        if number >= len(self):
            self.reused += 1
        self.taken += 1
        return identity

    def take_own(self, count: int) -> list[Identity]:
        """``count`` identities for one user to keep (a bot's fixed accounts): the next lines
        of the pool, claimed at once, never handed to anyone else; fewer (or none) when the
        pool runs out, as it never wraps for this."""
        if count <= 0 or not len(self):
            return []
        first = claim(self.pool_dir, self.name, count)
        mine = []
        with self._path.open("rb") as f:
            for line_no in range(first, min(first + count, len(self))):
                f.seek(self._offsets[line_no])
                line = f.read(self._offsets[line_no + 1] - self._offsets[line_no])
                mine.append(Identity(*line.decode().split()))
        self.taken += len(mine)
        return mine

    def _claim(self) -> bool:
        if self._used_up or not len(self):
            return False
        first = claim(self.pool_dir, self.name, self._block)
        end = first + self._block
        if not self._wrap:
            self._used_up = end >= len(self)
            end = min(end, len(self))
        with self._path.open("rb") as f:
            for number in reversed(range(first, end)):
                line_no = number % len(self)
                f.seek(self._offsets[line_no])
                line = f.read(self._offsets[line_no + 1] - self._offsets[line_no])
                self._claimed.append((number, Identity(*line.decode().split())))
        return bool(self._claimed)


_loaded: dict[str, Pool] = {}
_lock = threading.Lock()  # gevent patches it; it only guards the first load


def shared_pool(pool_dir: str, name: str, processes: int) -> Pool:
    """The process's view of pool ``name``, opened on first use."""
    with _lock:
        if name not in _loaded:
            # a code is used once, a bot keeps its accounts; shoppers may come back
            wrap = name not in (FCODE_HOLDERS, BOT_ACCOUNTS)
            _loaded[name] = Pool(pool_dir, name, processes=processes, wrap=wrap)
        return _loaded[name]


def loaded_pools() -> dict[str, Pool]:
    return dict(_loaded)
