"""Where a booked shopper stands: state, place in the queue, and an honest wait estimate.

Pure functions over what Redis reports; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flashsale.models import Admission, BookingState, iso


def estimate_wait_s(
    ahead: int, rate_per_s: float, earliest_ms: int, now_ms: int
) -> tuple[int, bool]:
    """Seconds until a shopper with ``ahead`` shoppers before them is admitted, and whether
    that is only a lower bound.

    With admissions observed in the last minute (``rate_per_s``), the wait is the time for
    ``ahead + 1`` more admissions at that rate. Without, nothing says how fast places will
    free, so the answer is the earliest moment one can (``earliest_ms``: the next window
    close or reservation deadline), flagged as a lower bound rather than dressed up as a
    prediction."""
    floor_s = max(0, earliest_ms - now_ms) / 1000
    if rate_per_s > 0:
        return math.ceil(max(floor_s, (ahead + 1) / rate_per_s)), False
    return math.ceil(floor_s), True


@dataclass(frozen=True, slots=True)
class Standing:
    """A booked shopper's state, and for one waiting, their place and wait."""

    state: BookingState
    ahead: int | None = None  # shoppers before them still waiting; None when not waiting
    wait_s: int | None = None
    wait_is_lower_bound: bool = False
    admitted_until_ms: int | None = None  # the admission window's end, while it is open


@dataclass(frozen=True, slots=True)
class BookingStatus:
    sale_id: str
    user_id: str
    booking_no: int
    admission: Admission
    queue_rank: int | None  # place in the admission order; None until a lottery is drawn
    standing: Standing
    # an arrival sale's opening window: the shopper's ticket, whose draw gives queue_rank
    ticket: int | None = None

    def to_json(self) -> dict[str, Any]:
        s = self.standing
        opening = {} if self.ticket is None else {"queue": "opening", "ticket": self.ticket}
        return {
            "sale_id": self.sale_id,
            "user_id": self.user_id,
            "booking_no": self.booking_no,
            "admission": self.admission.value,
            "state": s.state.value,
            "queue_rank": self.queue_rank,
            "position": s.ahead,
            "estimated_wait_s": s.wait_s,
            "wait_is_lower_bound": s.wait_is_lower_bound,
            "admitted_until": None if s.admitted_until_ms is None else iso(s.admitted_until_ms),
            **opening,
        }


@dataclass(frozen=True, slots=True)
class QueueFacts:
    """What Redis holds about a queued sale, read at ``now_ms``."""

    now_ms: int
    starts_ms: int
    over: bool  # ended or closed
    exhausted: bool  # no public unit left and none reserved: nothing can come back
    frontier: int  # ranks admitted so far (before the start: those admitted at the start)
    everyone_admitted: bool  # the whole queue has been admitted (windows no longer matter)
    cursor: int  # ranks below it have had their windows closed
    window_ms: int
    rate_per_s: float
    next_free_ms: int  # the next moment a place can free, 0 when unknown

    def seconds_until(self, ms: int) -> int:
        return max(0, math.ceil((ms - self.now_ms) / 1000))


def queued_standing(
    f: QueueFacts, rank: int | None, admitted_ms: int | None, holding: bool
) -> Standing:
    """Where the shopper of queue ``rank`` stands; ``admitted_ms`` is when their wave was
    admitted and ``holding`` whether they hold units bought through the queue."""
    done = BookingState.PURCHASED if holding else BookingState.PASSED
    started = f.now_ms >= f.starts_ms
    if f.over:
        return Standing(done)
    if rank is None:  # a lottery before its draw: nobody knows the order yet
        return Standing(BookingState.WAITING, None, f.seconds_until(f.starts_ms), True)
    if rank <= f.frontier:
        if not started:  # admitted at the opening
            return Standing(BookingState.WAITING, 0, f.seconds_until(f.starts_ms))
        assert admitted_ms is not None
        until_ms = admitted_ms + f.window_ms
        if rank < f.cursor or f.now_ms >= until_ms:
            if f.everyone_admitted:  # nobody waits any more: what is left is for all booked
                return Standing(BookingState.PURCHASED if holding else BookingState.ADMITTED)
            return Standing(done)
        if holding:
            return Standing(BookingState.PURCHASED, admitted_until_ms=until_ms)
        return Standing(BookingState.ADMITTED, admitted_until_ms=until_ms)
    if f.exhausted and started:
        return Standing(BookingState.PASSED)
    ahead = rank - f.frontier - 1
    if not started:  # the first places can free when the opening windows close
        return Standing(
            BookingState.WAITING, ahead, f.seconds_until(f.starts_ms + f.window_ms), True
        )
    wait_s, lower_bound = estimate_wait_s(ahead, f.rate_per_s, f.next_free_ms, f.now_ms)
    return Standing(BookingState.WAITING, ahead, wait_s, lower_bound)


def arrival_standing(now_ms: int, starts_ms: int, over: bool, holding: bool) -> Standing:
    """First come, first served: every booked shopper is admitted when the sale opens."""
    if holding:
        return Standing(BookingState.PURCHASED)
    if over:
        return Standing(BookingState.PASSED)
    if now_ms < starts_ms:
        return Standing(BookingState.WAITING, 0, math.ceil((starts_ms - now_ms) / 1000))
    return Standing(BookingState.ADMITTED)
