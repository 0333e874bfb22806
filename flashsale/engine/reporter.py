"""What the service log says about the sales themselves: a sale opening, selling out, coming
back on sale, ending, and a one-line summary of each live sale every few seconds.

Every HTTP worker runs a sweeper, and the sweeper calls this reporter, but one process at a
time speaks: the holder of a lease in Redis (``<prefix>:reporter``, a few seconds, renewed
while the holder lives; another process takes over when it dies). The status last logged is
kept beside the sale (``<prefix>:{<sale>}:reported``), so a takeover neither repeats a
transition nor misses one.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import cast

from redis.exceptions import RedisError

from flashsale import errors
from flashsale.engine.engine import Engine
from flashsale.models import SaleStatus, SaleView, iso

log = logging.getLogger(__name__)

LEASE_MS = 5000
TICK_S = 1.0


@dataclass(slots=True)
class _Pace:
    """The previous summary of a sale: its units sold so far, when, and what it said."""

    sold_total: int
    at_s: float
    line: str


def sold_total(view: SaleView) -> int:
    """Units taken from the stock so far (reservations and late payments; a unit that came
    back and sold again counts again): its rate is the sale's pace."""
    c = view.counters
    return c.reserved + c.paid + c.expired + c.cancelled


class SaleReporter:
    def __init__(
        self,
        engine: Engine,
        *,
        summary_interval_s: float = 10.0,
        tick_s: float = TICK_S,
        lease_ms: int = LEASE_MS,
    ) -> None:
        self.engine = engine
        self.summary_interval_s = summary_interval_s
        self.tick_s, self.lease_ms = tick_s, lease_ms
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._last_tick = 0.0
        self._last_summary = time.monotonic()
        self._paces: dict[str, _Pace] = {}

    async def tick(self) -> None:
        """Called by the sweeper after each round; does something at most once a second."""
        now_s = time.monotonic()
        if now_s - self._last_tick < self.tick_s:
            return
        self._last_tick = now_s
        try:
            if not await self._hold_lease():
                self._paces.clear()  # a later takeover starts its pace afresh
                return
            seconds, micros = await self.engine.redis.time()
            now_ms = seconds * 1000 + micros // 1000
            summarize = now_s - self._last_summary >= self.summary_interval_s
            if summarize:
                self._last_summary = now_s
            for sale_id in await self.engine.sale_ids():
                key = self.engine.keys.sale(sale_id).reported
                before = cast(str | None, await self.engine.redis.get(key))
                if before == SaleStatus.ENDED.value:
                    continue  # an ended sale stays ended: nothing more to tell
                try:
                    view = await self.engine.get_sale(sale_id)
                except errors.SaleNotFound:  # deleted meanwhile
                    continue
                status = view.status(now_ms)
                await self._transition(view, before, status, now_ms)
                if summarize:
                    self._summary(view, status, now_s)
        except RedisError as exc:
            log.debug("sale reporter: %s", exc)

    async def _hold_lease(self) -> bool:
        redis, key = self.engine.redis, self.engine.keys.reporter_lease
        if await redis.set(key, self.owner, px=self.lease_ms, nx=True):
            return True
        if await redis.get(key) == self.owner:
            await redis.pexpire(key, self.lease_ms)
            return True
        return False

    async def _transition(
        self, view: SaleView, before: str | None, status: SaleStatus, now_ms: int
    ) -> None:
        if before == status.value:
            return
        await self.engine.redis.set(self.engine.keys.sale(view.definition.sale_id).reported,
                                    status.value)  # fmt: skip
        if before is None and status in (SaleStatus.SCHEDULED, SaleStatus.ENDED):
            return  # first seen: a sale not begun, or one over before this reporter was
        message = _transition_message(view, before, status, now_ms)
        if message:
            log.info("sale %s %s", view.definition.sale_id, message)

    def _summary(self, view: SaleView, status: SaleStatus, now_s: float) -> None:
        sale_id = view.definition.sale_id
        if status not in (SaleStatus.OPEN, SaleStatus.PAUSED, SaleStatus.SOLD_OUT):
            self._paces.pop(sale_id, None)
            return
        c = view.counters
        total = sold_total(view)
        line = (
            f"available {c.available}"
            + (f" (F-code {c.fcode_available})" if view.definition.fcode_stock else "")
            + f", reserved {c.reserved}, paid {c.paid}"
        )
        policy = view.definition.booking
        if policy is not None and policy.admission.queued:
            line += f", queue admitted {c.admitted}, waiting {max(0, c.bookings - c.admitted)}"
        previous = self._paces.get(sale_id)
        self._paces[sale_id] = _Pace(total, now_s, line)
        if status is not SaleStatus.OPEN and previous is not None and previous.line == line:
            return  # a sale that is not selling says so once, until something moves
        pace = "-"
        if previous is not None and now_s > previous.at_s:
            pace = f"{(total - previous.sold_total) / (now_s - previous.at_s):.1f}"
        log.info("sale %s %s: %s sold/s, %s", sale_id, status.value, pace, line)


def _transition_message(
    view: SaleView, before: str | None, status: SaleStatus, now_ms: int
) -> str | None:
    d, c = view.definition, view.counters
    if status is SaleStatus.OPEN:
        if before == SaleStatus.PAUSED.value:
            return None  # the pause and the resume are logged where the operator made them
        if before == SaleStatus.SOLD_OUT.value:
            return f"back on sale: {c.available} unit(s) returned"
        lane = f" ({d.fcode_stock} more set aside for F-codes)" if d.fcode_stock else ""
        return f"opened: {c.available} unit(s) on sale{lane}"
    if status is SaleStatus.SOLD_OUT:
        after_s = max(0, now_ms - d.starts_ms) / 1000
        return (f"sold out {after_s:.1f} s after opening: {c.paid} unit(s) paid, "
                f"{c.reserved} reserved and unpaid")  # fmt: skip
    if status is SaleStatus.ENDED:
        unpaid = f"{c.reserved} reserved and unpaid" if c.reserved else "none unpaid"
        why = "was closed" if view.state.value == "closed" else f"ended at {iso(d.ends_ms)}"
        return (f"{why}: {c.paid} unit(s) paid, {unpaid}, {c.expired} expired, "
                f"{c.cancelled} cancelled")  # fmt: skip
    return None
