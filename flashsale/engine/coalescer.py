"""Redis calls made in the same event-loop tick, sent together as one pipeline.

Under a launch crowd hundreds of requests are in flight in one process, and most of redis-py's
cost is per round trip (pool checkout, packing, a future, a socket write and read), not per
command. Gathering the script calls issued while the loop runs its ready callbacks, and sending
them as one non-transactional pipeline on one connection, pays that cost once per tick: two to
three times more calls per CPU second here (BENCHMARKS.md). Each caller still gets its own
reply or its own error; a quiet process sends single calls with one tick of added latency.

The batch is packed by hiredis (C) and sent on a lean connection of its own (wire.py), or,
with ``FLASHSALE_REDIS_CLIENT=redis-py``, written to one of redis-py's pooled connections and
read back with redis-py's parser. (redis-py's own pipeline packs every argument in Python,
which cost more than the rest of the call.) Every script flashsale sends is idempotent
by request, so a batch whose connection broke is sent once more on a fresh connection (the
caller may then see its own first answer as a replay: a buy as replayed, a booking as
existing). On Redis Cluster a batch would have to be split by slot; today one batch goes to
one server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError

from flashsale.engine.wire import Wire
from flashsale.metrics.tally import TALLY

Command = tuple[Any, ...]


class Coalescer:
    """Sends EVALSHA calls through one pipeline per event-loop tick."""

    def __init__(self, redis: Redis, *, wire: Wire | None = None, max_batch: int = 1000) -> None:
        self.redis = redis
        self.wire = wire  # None: batches go through redis-py's pooled connections
        self.max_batch = max_batch
        self._pending: list[tuple[Command, asyncio.Future[Any]]] = []
        self._flush_scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return await self._submit(("EVALSHA", sha, numkeys, *keys_and_args))

    async def script_load(self, body: str) -> Any:
        return await self.redis.script_load(body)

    async def _submit(self, command: Command) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((command, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._in_flight.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        packed = b"".join(hiredis.pack_command(command) for command, _ in batch)
        started = time.perf_counter()
        try:
            try:
                replies = await self._round_trip(packed, len(batch))
            except (ConnectionError, OSError):
                # a connection that broke (a Redis restart): once more, reconnected. Not after
                # a timeout: a slow Redis needs less load, not the same batch again.
                replies = await self._round_trip(packed, len(batch))
        except asyncio.CancelledError:  # shutting down
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the connection failed: every caller hears of it
            TALLY.redis_batch(time.perf_counter() - started, len(batch), exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        TALLY.redis_batch(time.perf_counter() - started, len(batch), None)  # one per batch
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # the caller was cancelled meanwhile
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _round_trip(self, packed: bytes, count: int) -> list[Any]:
        """Write a packed batch and read its ``count`` replies; an error reply is returned in
        its place, not raised."""
        if self.wire is not None:
            return await self.wire.send(packed, count)
        pool = self.redis.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(await connection.read_response())
                except ResponseError as error:  # read in full: the next reply follows
                    replies.append(error)
            return replies
        finally:
            await pool.release(connection)
