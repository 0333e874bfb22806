"""Where a booked shopper stands: state, place in the queue, and an honest wait estimate.

Pure functions over what Redis reports; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flashsale.models import Admission, BookingState, iso

MINUTE_MS = 60_000


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
class BookingStatus:
    sale_id: str
    user_id: str
    booking_no: int
    admission: Admission
    state: BookingState
    queue_rank: int | None  # place in the admission order; None until a lottery is drawn
    ahead: int | None  # shoppers before them still waiting; None when not waiting
    estimated_wait_s: int | None
    wait_is_lower_bound: bool = False
    admitted_until_ms: int | None = None  # the admission window's end, once admitted

    def to_json(self) -> dict[str, Any]:
        return {
            "sale_id": self.sale_id,
            "user_id": self.user_id,
            "booking_no": self.booking_no,
            "admission": self.admission.value,
            "state": self.state.value,
            "queue_rank": self.queue_rank,
            "position": self.ahead,
            "estimated_wait_s": self.estimated_wait_s,
            "wait_is_lower_bound": self.wait_is_lower_bound,
            "admitted_until": None
            if self.admitted_until_ms is None
            else iso(self.admitted_until_ms),
        }


@dataclass(frozen=True, slots=True)
class QueueFacts:
    """What Redis holds about a queued sale, read at ``now_ms``."""

    now_ms: int
    starts_ms: int
    over: bool  # ended or closed
    exhausted: bool  # no public unit left and none reserved: nothing can come back
    bookings: int
    frontier: int  # ranks admitted so far (before the start: those admitted at the start)
    cursor: int  # ranks below it have had their windows closed
    window_ms: int
    rate_per_s: float
    next_free_ms: int  # the next moment a place can free, 0 when unknown


def queued_state(
    facts: QueueFacts, rank: int | None, admitted_ms: int | None, holding: bool
) -> tuple[BookingState, int | None, tuple[int, bool] | None, int | None]:
    """(state, ahead, (wait, lower bound) or None, admitted until) of a booked shopper."""
    f = facts
    started = f.now_ms >= f.starts_ms
    if f.over:
        return (BookingState.PURCHASED if holding else BookingState.PASSED), None, None, None
    if rank is None:  # a lottery before its draw: nobody knows the order yet
        return BookingState.WAITING, None, (max(0, f.starts_ms - f.now_ms) // 1000, True), None
    if rank <= f.frontier:
        if not started:
            return (
                BookingState.WAITING,
                0,
                (math.ceil((f.starts_ms - f.now_ms) / 1000), False),
                None,
            )
        assert admitted_ms is not None
        until_ms = admitted_ms + f.window_ms
        if rank < f.cursor or f.now_ms >= until_ms:
            return (BookingState.PURCHASED if holding else BookingState.PASSED), None, None, None
        return (BookingState.PURCHASED if holding else BookingState.ADMITTED), None, None, until_ms
    if f.exhausted and started:
        return BookingState.PASSED, None, None, None
    ahead = rank - f.frontier - 1
    if not started:  # the first places free when the opening windows close
        return (
            BookingState.WAITING,
            ahead,
            (math.ceil((f.starts_ms + f.window_ms - f.now_ms) / 1000), True),
            None,
        )
    return (
        BookingState.WAITING,
        ahead,
        estimate_wait_s(ahead, f.rate_per_s, f.next_free_ms, f.now_ms),
        None,
    )
