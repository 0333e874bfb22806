"""Shopper identities: pre-minted tokens the driver wrote, shared out among Locust processes.

Each pool file holds one identity a line: ``user_id token`` (and ``code`` for F-code holders),
in the order the crowd should take them (for a queued sale, front of the queue first). Process
``i`` of ``n`` takes lines ``i, i + n, i + 2n, ...``, so no two processes act as the same
shopper; within a process the users take identities one after another from one pool.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BUYERS = "buyers"  # booked shoppers
WALK_INS = "walk_ins"  # shoppers who never booked
POLLERS = "pollers"  # booked shoppers who arrive late and watch
FCODE_HOLDERS = "fcode_holders"  # one F-code each; not booked (F-codes skip the queue)
POOLS = (BUYERS, WALK_INS, POLLERS, FCODE_HOLDERS)


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


def write_pool(pool_dir: str | Path, name: str, rows: Iterator[tuple[str, ...]]) -> int:
    """Write identities (user, token[, code]) one a line; how many."""
    count = 0
    with pool_path(pool_dir, name).open("w") as f:
        for row in rows:
            f.write(" ".join(row))
            f.write("\n")
            count += 1
    return count


class Pool:
    """Identities for one process. ``take`` hands each out once; when all are taken, a pool
    that may ``wrap`` starts again from the first (those shoppers come back: the service
    must answer them as returning shoppers, e.g. ``limit_reached``)."""

    def __init__(self, identities: list[Identity], *, wrap: bool) -> None:
        self._identities = identities
        self._wrap = wrap
        self._next = 0
        self.reused = 0  # identities handed out a second time or more

    def __len__(self) -> int:
        return len(self._identities)

    def take(self) -> Identity | None:
        if not self._identities:
            return None
        if self._next >= len(self._identities):
            if not self._wrap:
                return None
            self.reused += 1
        identity = self._identities[self._next % len(self._identities)]
        self._next += 1
        return identity

    @property
    def taken(self) -> int:
        return self._next


def read_pool(pool_dir: str | Path, name: str, index: int, processes: int) -> list[Identity]:
    identities = []
    with pool_path(pool_dir, name).open() as f:
        for line_no, line in enumerate(f):
            if line_no % processes == index:
                identities.append(Identity(*line.split()))
    return identities


_loaded: dict[str, Pool] = {}
_lock = threading.Lock()  # gevent patches it; it only guards the first load


def shared_pool(pool_dir: str, name: str, index: int, processes: int) -> Pool:
    """The process's pool ``name``, read on first use (by then a worker knows its index)."""
    with _lock:
        if name not in _loaded:
            wrap = name != FCODE_HOLDERS  # a code is used once; shoppers may come back
            _loaded[name] = Pool(read_pool(pool_dir, name, index, processes), wrap=wrap)
        return _loaded[name]


def loaded_pools() -> dict[str, Pool]:
    return dict(_loaded)
