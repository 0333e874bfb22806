"""Publishing: what this process counted, into the Prometheus metrics, about once a second.

The hot path only counts in plain ints (tally.py); the background loops keep running totals of
their own (``OrderWriter.written``, ``Sweeper.expired``, ``Relay.counts``). A :class:`Publisher`
turns both into metric increments, one per series that moved, and sets this process's
PostgreSQL pool gauges. The /metrics handler publishes its own process's counts just before it
answers, so a scrape is at most one interval behind for the other processes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from prometheus_client import Counter

from flashsale.metrics import registry
from flashsale.metrics.tally import TALLY, Tally

log = logging.getLogger(__name__)

INTERVAL_S = 1.0


class _Follower:
    """A running total kept elsewhere, published as a counter by what it grew."""

    __slots__ = ("counter", "read", "seen")

    def __init__(self, counter: Counter, read: Callable[[], int]) -> None:
        self.counter = counter
        self.read = read
        self.seen = 0

    def publish(self) -> None:
        now = self.read()
        if now > self.seen:
            self.counter.inc(now - self.seen)
        self.seen = now


class Publisher:
    """Publishes one process's counts; see the module docstring."""

    def __init__(self, tally: Tally = TALLY) -> None:
        self.tally = tally
        self._followers: list[_Follower] = []
        self._pools: list[asyncpg.Pool] = []
        # label children, made once (``labels`` is the slow part of an update)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def follow(self, counter: Counter, read: Callable[[], int]) -> None:
        """Publish the running total ``read()`` as ``counter``, by what it grows."""
        self._followers.append(_Follower(counter, read))

    def follow_writer(self, writer: Any) -> None:
        """An order writer (store/writer.py): events written, dead letters set aside."""
        self.follow(registry.WRITER_EVENTS, lambda: int(writer.written))
        self.follow(registry.WRITER_DEAD_LETTERS, lambda: int(writer.dead_lettered))

    def follow_sweeper(self, sweeper: Any) -> None:
        """An expiry sweeper (engine/sweeper.py): reservations expired."""
        self.follow(registry.SWEEPER_EXPIRED, lambda: int(sweeper.expired))

    def follow_relay(self, relay: Any) -> None:
        """The order events relay (outbox/relay.py): deliveries by result, given up."""
        counts = relay.counts
        delivered = self._child(registry.RELAY_DELIVERIES, "delivered")
        failed = self._child(registry.RELAY_DELIVERIES, "failed")
        self.follow(delivered, lambda: int(counts.delivered))
        self.follow(failed, lambda: int(counts.failed))
        self.follow(registry.RELAY_GIVEN_UP, lambda: int(counts.given_up))
        self.show_at_zero(registry.RELAY_DELIVERIES, "delivered", "failed")

    def show_at_zero(self, metric: Counter, *label_values: str) -> None:
        """Show a labelled counter's series from the start, at 0: a rate over a series that
        appears only with its first event misses that event."""
        for value in label_values:
            self._child(metric, value).inc(0)

    def watch_pool(self, pool: asyncpg.Pool) -> None:
        """Report this PostgreSQL pool's connections (added up over the processes)."""
        self._pools.append(pool)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def publish(self) -> None:
        """Everything counted since the last call, into the metrics."""
        tally = self.tally
        for route in tally.routes.values():
            if route.statuses:
                statuses, route.statuses = route.statuses, {}
                for status, n in statuses.items():
                    self._child(registry.HTTP_REQUESTS, route.method, route.route,
                                str(status)).inc(n)  # fmt: skip
                buckets, total = route.duration.take()
                registry.add_observations(
                    self._child(registry.HTTP_DURATION, route.method, route.route),
                    buckets, total,
                )  # fmt: skip
        if tally.buys:
            buys, tally.buys = tally.buys, {}
            for outcome, n in buys.items():
                self._child(registry.BUYS, outcome).inc(n)
        if tally.payments:
            payments, tally.payments = tally.payments, {}
            for (outcome, reason), n in payments.items():
                self._child(registry.PAYMENTS, outcome, reason).inc(n)
        if tally.redis_commands:
            commands, tally.redis_commands = tally.redis_commands, 0
            registry.REDIS_BATCH_COMMANDS.inc(commands)
            buckets, total = tally.redis_batches.take()
            registry.add_observations(registry.REDIS_BATCH_DURATION, buckets, total)
        if tally.redis_errors:
            errors, tally.redis_errors = tally.redis_errors, {}
            for kind, n in errors.items():
                self._child(registry.REDIS_BATCH_ERRORS, kind).inc(n)
        for follower in self._followers:
            follower.publish()
        if self._pools:
            size = sum(p.get_size() for p in self._pools)
            idle = sum(p.get_idle_size() for p in self._pools)
            self._child(registry.PG_POOL_CONNECTIONS, "idle").set(idle)
            self._child(registry.PG_POOL_CONNECTIONS, "in_use").set(size - idle)
            registry.PG_POOL_MAX.set(sum(p.get_max_size() for p in self._pools))

    async def run(self, interval_s: float = INTERVAL_S) -> None:
        """Publish every ``interval_s`` until cancelled, and once more then."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    self.publish()
                except Exception:  # never the end of counting; logged, tried next time
                    log.exception("publishing metrics failed")
        finally:
            try:
                self.publish()
            except Exception:
                log.exception("publishing metrics failed")

    @contextlib.asynccontextmanager
    async def running(self, interval_s: float = INTERVAL_S) -> AsyncIterator[Publisher]:
        """Publish in the background while the block runs."""
        task = asyncio.create_task(self.run(interval_s), name="metrics publisher")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def publishing(
    enabled: bool, *, pool: asyncpg.Pool | None = None, writer: Any = None, relay: Any = None
) -> AsyncIterator[None]:
    """For a process of its own (the order writer, the relay): publish its counts while the
    block runs, when metrics are ``enabled``."""
    if not enabled:
        yield
        return
    publisher = Publisher()
    if pool is not None:
        publisher.watch_pool(pool)
    if writer is not None:
        publisher.follow_writer(writer)
    if relay is not None:
        publisher.follow_relay(relay)
    async with publisher.running():
        yield
