"""Group commit for confirm mode "postgres": buys wait for their order row to be committed.

Concurrent buys queue their rows; one task writes whatever is queued in a single statement, so
a crowd costs a few commits a second rather than one fsync per buy. The orders' outbox rows
(their ``order.reserved`` events) are written in the same transaction, and so are the payments
of payment notifications waiting for theirs (flashsale/payments/store.py).
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from flashsale.outbox.events import record_events
from flashsale.payments.store import PaymentRow, insert_payments
from flashsale.store.orders import OrderRow, upsert_orders

log = logging.getLogger(__name__)


class GroupCommitter:
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 1000) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[OrderRow | PaymentRow, asyncio.Future[None]]] = (
            asyncio.Queue()
        )

    async def commit(self, row: OrderRow | PaymentRow) -> None:
        """Return once ``row`` is committed; raise what the commit raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((row, future))
        await future

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [(row, fut) for row, fut in batch if not fut.done()]
            try:
                rows = [row for row, _ in live if isinstance(row, OrderRow)]
                async with self.pool.acquire() as conn, conn.transaction():
                    await upsert_orders(conn, rows)
                    await record_events(conn, [row for row, _ in live])
                    await insert_payments(
                        conn, [row for row, _ in live if isinstance(row, PaymentRow)]
                    )
            except asyncio.CancelledError:
                for _, fut in live:
                    fut.cancel()
                raise
            except Exception as exc:  # every waiter must hear about it, whatever it was
                log.warning("group commit of %d order(s) failed: %s", len(live), exc)
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for _, fut in live:
                    if not fut.done():
                        fut.set_result(None)
