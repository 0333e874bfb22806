"""The tickets of a sale's opening window as Redis holds them, and the summary of the draw that
``GET /v1/sales/{id}/opening`` publishes once the window has closed.

The ticket list is read from the sale's ticket roll (the user digest of every ticket by
number, 10 bytes each: a million tickets are 10 MB, read a megabyte at a time), never while the
hot path waits on it: the summary's digest is computed once, by the first reader after the
draw, and kept in the sale hash (``op_digest``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.client import NEVER_DECODE

from flashsale import errors
from flashsale.engine.keys import SaleKeys
from flashsale.models import iso
from flashsale.opening import shuffle

_STATE_FIELDS = ("starts_ms", "op_win_ms", "op_seed", "op_tickets", "op_n", "op_digest")
_DIGEST_BYTES = 10  # a user digest (engine/keys.py, booking_slot)
_READ_BYTES = 1_000_000  # a GETRANGE of the roll: 100,000 tickets


@dataclass(frozen=True, slots=True)
class OpeningState:
    """A sale's opening window as Redis holds it, read at ``now_ms`` (Redis's clock)."""

    sale_id: str
    window_ms: int
    starts_ms: int
    seed: str
    tickets: int  # every ticket given so far (the last number)
    # the window's tickets: fixed once it has closed (op_n, or op_tickets when no script has
    # run since the close, as no later ticket can be given before one does); None while open
    window_tickets: int | None
    digest: str | None  # of the ordered list, once computed
    now_ms: int

    @property
    def queue_opens_ms(self) -> int:
        return self.starts_ms - self.window_ms

    @property
    def draw_ms(self) -> int:
        return self.starts_ms + self.window_ms

    def summary(self, digest: str) -> dict[str, Any]:
        assert self.window_tickets is not None
        return {
            "sale_id": self.sale_id,
            "method": shuffle.METHOD,
            "window_ms": self.window_ms,
            "queue_opened_at": iso(self.queue_opens_ms),
            "drawn_at": iso(self.draw_ms),
            "seed": self.seed,
            "seed_sha256": shuffle.commitment(self.seed),
            "window_tickets": self.window_tickets,
            "tickets": self.tickets,
            "ordered_list_sha256": digest,
        }


async def read_state(redis: Redis, keys: SaleKeys) -> OpeningState:
    """The window's state and Redis's clock, read together (MULTI): a window seen closed has all
    of its tickets counted."""
    async with redis.pipeline(transaction=True) as pipe:
        _ = pipe.hmget(keys.sale, _STATE_FIELDS)
        _ = pipe.time()
        values, (seconds, micros) = await pipe.execute()
    f = cast(dict[str, str | None], dict(zip(_STATE_FIELDS, values, strict=True)))
    if f["starts_ms"] is None:
        raise errors.SaleNotFound()
    window_ms = int(f["op_win_ms"] or 0)
    if window_ms <= 0:
        raise errors.OpeningNotOffered()
    now = int(seconds) * 1000 + int(micros) // 1000
    starts_ms, tickets = int(f["starts_ms"]), int(f["op_tickets"] or 0)
    drawn = now >= starts_ms + window_ms
    window_tickets = int(f["op_n"]) if f["op_n"] else (tickets if drawn else None)
    return OpeningState(
        sale_id=keys.sale_id, window_ms=window_ms, starts_ms=starts_ms, seed=f["op_seed"] or "",
        tickets=tickets, window_tickets=window_tickets, digest=f["op_digest"], now_ms=now,
    )  # fmt: skip


def drawn_state(state: OpeningState) -> OpeningState:
    """``state``, or 409 ``opening_not_drawn`` (with the wait) while the window is open."""
    if state.window_tickets is None:
        wait_s = max(1, math.ceil((state.draw_ms - state.now_ms) / 1000))
        raise errors.OpeningNotDrawn(
            f"the opening window closes at {iso(state.draw_ms)}: its tickets are put in order "
            "then", retry_after_s=wait_s,
        )  # fmt: skip
    return state


async def read_holders(redis: Redis, keys: SaleKeys, tickets: int) -> list[str]:
    """The user digest (hex) of tickets 1..``tickets``: ``holders[t - 1]`` holds ticket t.

    Tickets given while this reads, numbered above ``tickets``, are left out."""
    size = tickets * _DIGEST_BYTES
    async with redis.pipeline(transaction=False) as pipe:
        for start in range(0, size, _READ_BYTES):
            end = min(size, start + _READ_BYTES) - 1
            # raw digests, not text
            _ = pipe.execute_command(
                "GETRANGE", keys.ticket_roll, start, end, **{NEVER_DECODE: True}
            )
        chunks = await pipe.execute()
    roll = b"".join(cast(list[bytes], chunks))
    if len(roll) != size:
        raise RuntimeError(
            f"the ticket roll holds {len(roll) // _DIGEST_BYTES} of {tickets} tickets: the "
            "ticket list is incomplete"
        )
    return [roll[i : i + _DIGEST_BYTES].hex() for i in range(0, size, _DIGEST_BYTES)]


async def ticket_rows(
    redis: Redis, keys: SaleKeys
) -> tuple[OpeningState, Iterator[tuple[int, int, str]]]:
    """The window's state and every ticket so far as (rank, ticket, user digest), in rank
    order: the window's as drawn, then the later ones by number."""
    state = drawn_state(await read_state(redis, keys))
    assert state.window_tickets is not None
    holders = await read_holders(redis, keys, state.tickets)
    rows = shuffle.ordered_rows(state.seed, state.window_tickets, holders)
    return state, rows


_computing: dict[str, asyncio.Task[str]] = {}


async def published(redis: Redis, keys: SaleKeys) -> dict[str, Any]:
    """What ``GET /v1/sales/{id}/opening`` answers: the method, the seed and its commitment, the
    number of tickets and the digest of the ordered list. The digest is computed by the first
    caller after the draw (concurrent callers of one process share the work) and kept."""
    state = drawn_state(await read_state(redis, keys))
    if state.digest is not None:
        return state.summary(state.digest)
    key = keys.sale
    task = _computing.get(key)
    if task is None:
        task = _computing[key] = asyncio.create_task(_compute_digest(redis, keys, state))
        task.add_done_callback(lambda _: _computing.pop(key, None))
    return state.summary(await asyncio.shield(task))


async def _compute_digest(redis: Redis, keys: SaleKeys, state: OpeningState) -> str:
    assert state.window_tickets is not None
    n = state.window_tickets
    holders = await read_holders(redis, keys, n)

    def compute() -> str:
        return shuffle.digest(shuffle.ordered_rows(state.seed, n, holders))

    digest = await asyncio.to_thread(compute)  # about a second a million: not on the loop
    await redis.hsetnx(keys.sale, "op_digest", digest)
    return digest
