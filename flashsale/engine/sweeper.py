"""The sweeper: returns the units of unpaid reservations once their deadline passes, and moves
booking queues on (closes ended admission windows, admits the next in line).

It walks each sale's deadlines zset (not keyspace notifications, which Redis drops when no
one listens), so reservations that fell due while Redis or the sweeper was away are returned
as soon as both are back. Several sweepers may run at once: the expire script re-checks every
candidate atomically, so each reservation is returned exactly once.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from flashsale.engine.bookings import Bookings
from flashsale.engine.engine import Engine
from flashsale.engine.reporter import SaleReporter

log = logging.getLogger(__name__)


class Sweeper:
    def __init__(self, engine: Engine, *, interval_s: float = 0.25, batch_size: int = 500) -> None:
        self.engine = engine
        self.bookings = Bookings(engine)
        # the sales' openings, sell-outs and summaries in the log, from one sweeper at a time
        self.reporter = SaleReporter(engine)
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.expired = 0

    async def run(self) -> None:
        while True:
            try:
                await self.sweep_once()
                await self.reporter.tick()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("sweeper: %s; retrying", exc)
            await asyncio.sleep(self.interval_s)

    async def sweep_once(self) -> int:
        """Expire every reservation due now and move every booking queue on, in every sale.
        Returns how many reservations were expired."""
        seconds, micros = await self.engine.redis.time()
        now_ms = seconds * 1000 + micros // 1000
        total = 0
        for sale_id in await self.engine.sale_ids():
            while True:
                seen, expired = await self.engine.expire_due(sale_id, now_ms, self.batch_size)
                total += expired
                if seen < self.batch_size:
                    break
            # after expiry, so that places freed by expired reservations are handed on now
            await self.bookings.admit(sale_id)
        if total:
            log.info("sweeper: %d reservation(s) expired", total)
        self.expired += total
        return total
