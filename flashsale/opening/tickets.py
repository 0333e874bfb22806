"""A ticket of the opening window, as the buy script answers a shopper who holds one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ticketed:
    """A public buy in a sale with an opening window, answered with the shopper's ticket
    instead of a unit: nothing was reserved. One ticket per shopper, however many requests."""

    ticket: int
    ahead: int | None  # shoppers before them still waiting; None until the window's draw
    admission_rate: float  # ranks admitted per second, over the last minute
    next_free_ms: int  # the next moment a place can free (0: unknown)
    now_ms: int
    draw_ms: int  # when the window closes and its tickets are put in order

    @classmethod
    def from_script(cls, result: Sequence[object]) -> Ticketed:
        """From buy.lua's ``{"ticketed", ticket, ahead (-1: not drawn yet), rate, next_ms,
        now_ms, draw_ms}``."""
        _, ticket, ahead, rate, next_ms, now, draw = result
        return cls(
            ticket=int(str(ticket)),
            ahead=None if int(str(ahead)) < 0 else int(str(ahead)),
            admission_rate=float(str(rate)),
            next_free_ms=int(str(next_ms)),
            now_ms=int(str(now)),
            draw_ms=int(str(draw)),
        )

    @property
    def drawn(self) -> bool:
        return self.now_ms >= self.draw_ms
