"""The order writer: Redis order and booking events -> PostgreSQL, at least once, idempotently.

Each sale's events stream is read through the consumer group ``writers``. A batch is committed
to PostgreSQL first and acknowledged (and deleted) in Redis after, so a crash in between only
makes the batch be written again, which the versioned upsert turns into a no-op. Entries left
pending by a writer that died are claimed by another after ``reclaim_idle_ms``; a restarted
writer first re-reads its own pending entries.

A batch is one transaction: the orders, the bookings and the outbox rows of its order changes
(flashsale/outbox/events.py: one per event of the batch, not only each order's newest state)
commit together or not at all.

An event PostgreSQL refuses for good (a value it cannot store) is set aside as a dead letter
(store/dead_letters.py) instead of being retried for ever: one bad event never holds up the
others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import cast

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from flashsale.engine.keys import WRITER_GROUP, Keyspace
from flashsale.failpoints import failpoint
from flashsale.outbox.events import record_events
from flashsale.payments.store import PaymentRow, insert_payments
from flashsale.store import dead_letters
from flashsale.store.bookings import BookingRow, insert_bookings
from flashsale.store.orders import OrderRow, upsert_orders

log = logging.getLogger(__name__)

StreamEntries = list[tuple[str, dict[str, str] | None]]


@dataclass(frozen=True, slots=True)
class _Event:
    stream: str
    entry_id: str
    fields: dict[str, str]
    row: OrderRow | BookingRow | PaymentRow


class OrderWriter:
    def __init__(
        self,
        redis: Redis,
        pool: asyncpg.Pool,
        keyspace: Keyspace,
        *,
        batch_size: int = 500,
        block_ms: int = 1000,
        reclaim_idle_ms: int = 30_000,
        consumer: str | None = None,
    ) -> None:
        self.redis = redis
        self.pool = pool
        self.keys = keyspace
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.reclaim_idle_ms = reclaim_idle_ms
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.written = 0
        self.dead_lettered = 0
        self._streams: list[str] = []
        self._stream_sales: dict[str, str] = {}
        self._grouped: set[str] = set()
        self._streams_refreshed = 0.0
        self._last_reclaim = 0.0
        self._own_pending = True  # at start, and after a failure, re-read our own PEL first
        # what the periodic INFO line sums up: events written and set aside since the last one
        self.summary_interval_s = 10.0
        self._summary_at = time.monotonic()
        self._summary_counts = (0, 0)

    async def run(self) -> None:
        """Write until cancelled; back off and retry while Redis or PostgreSQL is away."""
        log.info("order writer %s started", self.consumer)
        delay = 0.1
        while True:
            try:
                await self.step()
                delay = 0.1
                self._summarize()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("order writer: %s; retrying in %.1fs", exc, delay)
                if "NOGROUP" in str(exc):  # a stream went away (a deleted sale): look again
                    self._grouped.clear()
                    self._streams_refreshed = 0.0
                self._own_pending = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def step(self) -> int:
        """One round: find streams, reclaim orphans, write one batch. Returns entries written."""
        await self._refresh_streams()
        if not self._streams:
            await asyncio.sleep(self.block_ms / 1000)
            return 0
        if time.monotonic() - self._last_reclaim > self.reclaim_idle_ms / 1000 / 2:
            self._last_reclaim = time.monotonic()
            written = await self._reclaim()
            if written:
                return written
        if self._own_pending:
            batches = await self._read("0", block=False)
            if not any(entries for _, entries in batches):
                self._own_pending = False
                return 0
        else:
            batches = await self._read(">", block=True)
        return await self._commit(batches)

    async def drain(self) -> int:
        """Write everything currently in the streams (own pending included); for tests and tools."""
        total = 0
        self._streams_refreshed = 0.0
        self._own_pending = True
        while True:
            await self._refresh_streams()
            pending = self._own_pending
            batches = await self._read("0" if pending else ">", block=False)
            n = await self._commit(batches)
            total += n
            if not any(entries for _, entries in batches):
                if not pending:
                    return total
                self._own_pending = False

    async def _refresh_streams(self) -> None:
        if time.monotonic() - self._streams_refreshed < 1.0:
            return
        self._streams_refreshed = time.monotonic()
        sale_ids = sorted(cast(set[str], await self.redis.smembers(self.keys.sales_index)))
        streams = [self.keys.sale(s).events for s in sale_ids]
        self._stream_sales = dict(zip(streams, sale_ids, strict=True))
        for stream in streams:
            if stream not in self._grouped:
                try:
                    # id 0: a group made after the first events still delivers them
                    await self.redis.xgroup_create(stream, WRITER_GROUP, id="0", mkstream=True)
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                self._grouped.add(stream)
        self._streams = streams

    async def _read(self, last_id: str, *, block: bool) -> list[tuple[str, StreamEntries]]:
        reply = await self.redis.xreadgroup(
            WRITER_GROUP,
            self.consumer,
            dict.fromkeys(self._streams, last_id),
            count=self.batch_size,
            block=self.block_ms if block else None,
        )
        return cast(list[tuple[str, StreamEntries]], reply or [])

    async def _reclaim(self) -> int:
        written = 0
        for stream in self._streams:
            reply = await self.redis.xautoclaim(
                stream, WRITER_GROUP, self.consumer, self.reclaim_idle_ms, count=self.batch_size
            )
            entries: StreamEntries = reply[1]
            if entries:
                log.info("order writer: claimed %d orphaned entries of %s", len(entries), stream)
                written += await self._commit([(stream, entries)])
        return written

    async def _commit(self, batches: list[tuple[str, StreamEntries]]) -> int:
        events: list[_Event] = []
        refused: list[tuple[str, str, dict[str, str], str]] = []  # stream, id, fields, reason
        ids: dict[str, list[str]] = {}
        for stream, entries in batches:
            for entry_id, fields in entries:
                ids.setdefault(stream, []).append(entry_id)
                if not fields:  # None: the entry was deleted after a commit, nothing to write
                    continue
                try:
                    row = self._row(stream, fields)
                except dead_letters.PERMANENT_ERRORS as exc:  # an event nobody can read
                    refused.append((stream, entry_id, fields, dead_letters.describe(exc)))
                    continue
                events.append(_Event(stream, entry_id, fields, row))
        if not ids:
            return 0
        unreadable = len(refused)
        try:
            await self._write([e.row for e in events])
        except dead_letters.PERMANENT_ERRORS:
            # Some event of the batch is one PostgreSQL will never take: write them one by one
            # (replays are harmless) to find it, and set it aside.
            for event in events:
                try:
                    await self._write([event.row])
                except dead_letters.PERMANENT_ERRORS as exc:
                    refused.append(
                        (event.stream, event.entry_id, event.fields, dead_letters.describe(exc))
                    )
        failpoint("writer.after_commit")
        if refused:
            await self._set_aside(refused)
            gone = {(stream, entry_id) for stream, entry_id, _, _ in refused}
            ids = {
                stream: [i for i in entry_ids if (stream, i) not in gone]
                for stream, entry_ids in ids.items()
            }
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, entry_ids in ids.items():
                if entry_ids:
                    _ = pipe.xack(stream, WRITER_GROUP, *entry_ids)
                    _ = pipe.xdel(stream, *entry_ids)
            await pipe.execute()
        written = len(events) - (len(refused) - unreadable)
        self.written += written
        log.debug("order writer: %d event(s) of %d stream(s) written, %d set aside",
                  written, len(ids), len(refused))  # fmt: skip
        return written

    def _summarize(self) -> None:
        """Every ``summary_interval_s``, one INFO line of what was written, if anything was."""
        elapsed = time.monotonic() - self._summary_at
        if elapsed < self.summary_interval_s:
            return
        written = self.written - self._summary_counts[0]
        refused = self.dead_lettered - self._summary_counts[1]
        self._summary_at = time.monotonic()
        self._summary_counts = (self.written, self.dead_lettered)
        if written or refused:
            log.info("order writer: %d event(s) written to PostgreSQL in the last %.0f s "
                     "(%.0f/s), %d set aside as dead letters", written, elapsed,
                     written / elapsed, refused)  # fmt: skip

    def _row(self, stream: str, fields: dict[str, str]) -> OrderRow | BookingRow | PaymentRow:
        if fields.get("kind") == "booking":
            return BookingRow.from_event(self._sale_of_stream(stream), fields)
        if fields.get("kind") == "payment":
            return PaymentRow.from_event(self._sale_of_stream(stream), fields)
        return OrderRow.from_event(fields)

    async def _write(self, rows: list[OrderRow | BookingRow | PaymentRow]) -> None:
        order_rows = [r for r in rows if isinstance(r, OrderRow)]
        async with self.pool.acquire() as conn, conn.transaction():
            await upsert_orders(conn, order_rows)
            await insert_bookings(conn, [r for r in rows if isinstance(r, BookingRow)])
            await record_events(conn, rows)
            await insert_payments(conn, [r for r in rows if isinstance(r, PaymentRow)])

    async def _set_aside(self, refused: list[tuple[str, str, dict[str, str], str]]) -> None:
        by_stream: dict[str, list[tuple[str, dict[str, str], str]]] = defaultdict(list)
        # in stream order, whichever way each was found out
        for stream, entry_id, fields, reason in sorted(refused, key=_stream_order):
            by_stream[stream].append((entry_id, fields, reason))
        now = time.time_ns() // 1_000_000
        for stream, letters in by_stream.items():
            keys = self.keys.sale(self._sale_of_stream(stream))
            await dead_letters.set_aside(self.redis, keys, letters, now)
        self.dead_lettered += len(refused)

    def _sale_of_stream(self, stream: str) -> str:
        sale_id = self._stream_sales.get(stream)
        if sale_id is None:
            raise ValueError(f"events of an unknown stream: {stream!r}")
        return sale_id


def _stream_order(refusal: tuple[str, str, dict[str, str], str]) -> tuple[str, int, int]:
    stream, entry_id = refusal[0], refusal[1]
    ms, _, seq = entry_id.partition("-")
    return stream, int(ms), int(seq or 0)
