"""The relay: delivers the outbox's events to each webhook receiver, at least once, in order per
order, signed the Standard Webhooks way.

For each receiver the relay loops: take the newly committed outbox rows as pending deliveries
(receivers.intake), claim a batch, POST them, record the answers. The claim is per order, not
per row: a relay picks orders whose earliest pending event for that receiver is due, taking a
session-level advisory lock on each (receiver, order) as it goes (``pg_try_advisory_lock``:
one held by another relay is passed over, so relays sharing a receiver take different
orders, soonest due first), reads those orders' earliest pending events again under the
locks, sends them, records the answers (one statement when all went well) and only then lets
go of the locks. So:

- **one sender at a time**: while a relay holds an order's lock, no other sends any event of
  that order to that receiver; and since only an order's earliest pending event is ever sent,
  event k+1 of an order is never sent to a receiver before event k is delivered to it (or
  given up on);
- **nothing lost**: a relay killed mid-batch loses its connection and its locks with it; the
  events are still pending and the next relay sends them again, under the same
  ``webhook-id`` (the event's id). Receivers dedupe by it.

The locks are advisory and session-level rather than row locks of a transaction held while
sending: a transaction that locks rows takes a transaction id, and an open one holds back the
outbox cursor of every reader (cursor.py) for as long as a slow receiver takes to answer.

An order's event whose predecessor (sequence - 1) is not in the outbox yet waits: with several
order writers, a batch holding event k may commit after one holding k+1. It waits at most
``gap_wait_s`` for a predecessor that is not there at all (past that it is taken to be lost:
refused as a dead letter, say, or older than the outbox), and for as long as it takes for one
that is there but not yet taken in for the receiver.

A failed delivery (connection refused, no answer within ``timeout_s``, any answer but 2xx) is
tried again after an exponential backoff with jitter (``retry_base_s`` doubling up to
``retry_cap_s``, each wait drawn between half and all of it), until ``give_up_s`` after its
first attempt: then it is marked given up for that receiver, logged and counted
(``flashsale events status``), and the order's next event goes. An answer of 410 Gone disables
the receiver until ``flashsale events redeliver --receiver URL`` enables it again.

Sending is sender.py's lean HTTP/1.1 client, which costs a fraction of aiohttp's client an
event (the relay was CPU-bound on it); a batch goes out over up to ``connections`` keep-alive
connections at once. Several relays (``serve`` starts FLASHSALE_RELAY_PROCESSES of them) use
several cores.

The relay's queries are planned from ``outbox_deliveries``' statistics, which autovacuum
gathers a minute apart at best. A table that grew from nothing in a launch's first minute has
none, and without them PostgreSQL chose plans that read every pending delivery of the receiver
for each candidate (measured: a quarter of a second per batch at 4,000 pending deliveries,
six seconds in a rehearsal's sale; the relay fell minutes behind). So each relay analyzes
the table itself whenever the deliveries it took in have doubled since it last did (from
``ANALYZE_FROM_ROWS`` on): a few dozen milliseconds, a dozen times over a launch of a few
hundred thousand events.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import asyncpg

from flashsale import __version__
from flashsale.outbox import receivers
from flashsale.outbox.events import STORED_TEXT
from flashsale.outbox.sender import Answer, Sender
from flashsale.settings import Settings
from flashsale.webhooks.signing import sign

log = logging.getLogger(__name__)

ANALYZE_FROM_ROWS = 1000
# failed deliveries are logged at most this often per receiver, with how many since the last
FAILURE_LOG_EVERY_S = 10.0
# orders looked at for a batch, in batches: those another relay holds are passed over
_CANDIDATE_WINDOW = 4

# For one receiver ($1): each order's earliest pending event, due, whose predecessor has been
# taken in for this receiver (or, not in the outbox at all, cannot be waited for any longer
# than $2 seconds). The receiver's cursor is read once per statement (an InitPlan), not once
# per candidate: its row is updated at every intake, and while a long transaction anywhere on
# the server holds back pruning, each read walks every version of it written since.
_ELIGIBLE = """
FROM outbox_deliveries d JOIN outbox o ON o.id = d.outbox_id
WHERE d.receiver = $1 AND d.delivered_at IS NULL AND d.gave_up_at IS NULL
  AND d.next_attempt_at <= clock_timestamp()
  AND NOT EXISTS (
      SELECT 1 FROM outbox_deliveries e
      WHERE e.receiver = d.receiver AND e.order_id = d.order_id AND e.sequence < d.sequence
        AND e.delivered_at IS NULL AND e.gave_up_at IS NULL)
  AND (d.sequence IS NULL OR d.sequence = 1 OR coalesce(
       (SELECT (p.txid, p.id) <= (SELECT w.cursor_txid, w.cursor_id
                                   FROM webhook_receivers w WHERE w.url = $1)
        FROM outbox p
        WHERE p.order_id = d.order_id AND p.sequence = d.sequence - 1),
       o.created_at <= clock_timestamp() - $2 * interval '1 second'))
"""

# The orders with an event to send, soonest due first, each locked until
# pg_advisory_unlock_all() as it is taken; one held by another relay is passed over. The lock
# is tried only on the rows the LIMIT takes (a volatile condition stays above the subquery),
# so no lock is taken on an order that is not returned.
_CANDIDATES = f"""
SELECT c.order_id
FROM (SELECT d.order_id {_ELIGIBLE} ORDER BY d.next_attempt_at, d.outbox_id LIMIT $4) c
WHERE pg_try_advisory_lock(hashtext($1), hashtext(c.order_id))
LIMIT $3
"""

# read again, under the locks: another relay may have sent an event since the first look
_CLAIM = f"""
SELECT d.outbox_id, d.attempts, o.event_id, o.order_id, o.sequence,
       {STORED_TEXT.format("o.")} AS payload
{_ELIGIBLE} AND d.order_id = ANY($3::text[])
ORDER BY d.outbox_id
"""

_DELIVERED = """
UPDATE outbox_deliveries
SET delivered_at = clock_timestamp(), attempts = attempts + 1,
    last_attempt_at = clock_timestamp(), last_error = NULL,
    first_attempt_at = coalesce(first_attempt_at, clock_timestamp())
WHERE receiver = $1 AND outbox_id = ANY($2::bigint[])
"""

# a batch that all went well: recorded, and the receiver healthy, in one statement
_ALL_DELIVERED = f"""
WITH delivered AS ({_DELIVERED.strip()}),
healthy AS ({receivers.MARK_HEALTHY.strip()})
SELECT 1
"""

# a failure past give_up_s since the first attempt is the last one
_FAILED = """
UPDATE outbox_deliveries d
SET attempts = d.attempts + 1, last_attempt_at = clock_timestamp(), last_error = f.error,
    first_attempt_at = coalesce(d.first_attempt_at, clock_timestamp()),
    next_attempt_at = clock_timestamp() + f.delay_s * interval '1 second',
    gave_up_at = CASE
        WHEN coalesce(d.first_attempt_at, clock_timestamp())
             <= clock_timestamp() - $3 * interval '1 second' THEN clock_timestamp() END
FROM unnest($2::bigint[], $4::text[], $5::float8[]) AS f(id, error, delay_s)
WHERE d.receiver = $1 AND d.outbox_id = f.id
RETURNING d.outbox_id, d.gave_up_at IS NOT NULL AS gave_up, d.attempts
"""


@dataclass(frozen=True, slots=True)
class RelayConfig:
    urls: tuple[str, ...]
    key: bytes  # the HMAC key of FLASHSALE_WEBHOOK_SECRET
    timeout_s: float = 10.0
    retry_base_s: float = 1.0
    retry_cap_s: float = 3600.0
    give_up_s: float = 86_400.0
    gap_wait_s: float = 60.0
    batch_size: int = 200
    poll_s: float = 0.25
    connections: int = 50  # to each receiver: how many events of a batch are in flight at once

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayConfig:
        return cls(
            urls=settings.webhook_urls,
            key=settings.webhook_key,
            timeout_s=settings.webhook_timeout_s,
            retry_base_s=settings.webhook_retry_base_s,
            retry_cap_s=settings.webhook_retry_cap_s,
            give_up_s=settings.webhook_give_up_s,
            # a predecessor can sit in a dead writer's batch until another writer claims it
            gap_wait_s=2 * settings.writer_reclaim_idle_ms / 1000,
            batch_size=settings.webhook_batch_size,
            poll_s=settings.webhook_poll_s,
        )

    def backoff_s(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failure: exponential, capped, with jitter (so
        that the retries of many events do not arrive together)."""
        ceiling = min(self.retry_cap_s, self.retry_base_s * 2.0 ** min(attempts - 1, 60))
        return ceiling * random.uniform(0.5, 1.0)


@dataclass(frozen=True, slots=True)
class _Claimed:
    outbox_id: int
    attempts: int  # before this one
    event_id: str
    order_id: str
    sequence: int | None
    body: bytes


@dataclass
class RelayCounts:
    """What this relay has done since it started."""

    delivered: int = 0
    failed: int = 0
    given_up: int = 0


class Relay:
    def __init__(self, pool: asyncpg.Pool, config: RelayConfig) -> None:
        self.pool = pool
        self.config = config
        self.counts = RelayCounts()
        self._senders: dict[str, Sender] = {}
        self._taken = 0  # deliveries taken in by this relay
        self._taken_when_analyzed = 0
        self._failures_unlogged: dict[str, int] = {}
        self._failure_logged_at: dict[str, float] = {}

    async def run(self) -> None:
        """Deliver to every receiver until cancelled; one task each, so a slow receiver never
        holds up the others."""
        self._senders = {
            url: Sender(
                url, timeout_s=self.config.timeout_s, connections=self.config.connections,
                user_agent=f"flashsale/{__version__}",
            )
            for url in self.config.urls
        }  # fmt: skip
        try:
            async with asyncio.TaskGroup() as group:
                for url in self.config.urls:
                    group.create_task(self._serve(url), name=f"relay {url}")
        finally:
            for sender in self._senders.values():
                sender.close()

    async def _serve(self, url: str) -> None:
        delay = self.config.poll_s
        while True:
            try:
                # one connection for as long as it works: the pool resets a connection it gets
                # back, a round trip a batch that nothing needs
                async with self.pool.acquire() as conn:
                    while True:
                        taken_or_off = await receivers.intake(
                            conn, url, 10 * self.config.batch_size
                        )
                        if taken_or_off is None:  # disabled, or not known yet
                            if await receivers.is_disabled(conn, url):
                                await asyncio.sleep(max(1.0, self.config.poll_s))
                            else:
                                await receivers.register(conn, url)
                            continue
                        taken = taken_or_off
                        await self._analyze_if_grown(conn, taken)
                        sent = await self.send_batch(url, conn)
                        delay = self.config.poll_s
                        if sent < self.config.batch_size and not taken:
                            await asyncio.sleep(self.config.poll_s)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("relay to %s: %r; retrying in %.1fs", url, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _log_failures(self, url: str, count: int, error: str | None) -> None:
        """A receiver failing is an operator's business (its events wait, with backoff): say
        so, at most every FAILURE_LOG_EVERY_S per receiver, with the count since the last."""
        unlogged = self._failures_unlogged[url] = self._failures_unlogged.get(url, 0) + count
        now = time.monotonic()
        if now - self._failure_logged_at.get(url, -FAILURE_LOG_EVERY_S) < FAILURE_LOG_EVERY_S:
            return
        self._failure_logged_at[url] = now
        self._failures_unlogged[url] = 0
        log.warning(
            "relay to %s: %d deliveries failed since the last report (latest: %s); each is "
            "tried again with backoff, and the order's later events wait for it",
            url, unlogged, error,
        )  # fmt: skip

    async def _analyze_if_grown(self, conn: asyncpg.Connection, taken: int) -> None:
        """``ANALYZE outbox_deliveries`` once the deliveries taken in have doubled since the
        last time (see the module's docstring). Skipped, not waited for, while autovacuum or
        another relay is at it."""
        self._taken += taken
        if self._taken < max(ANALYZE_FROM_ROWS, 2 * self._taken_when_analyzed):
            return
        self._taken_when_analyzed = self._taken
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL lock_timeout = '200ms'")
                await conn.execute("ANALYZE outbox_deliveries")
        except asyncpg.LockNotAvailableError:
            return
        log.debug("relay: analyzed outbox_deliveries after %d deliveries taken in", self._taken)

    async def send_batch(self, url: str, conn: asyncpg.Connection | None = None) -> int:
        """Claim, send and record one batch for ``url``; how many events were sent."""
        if conn is None:
            async with self.pool.acquire() as conn:
                return await self.send_batch(url, conn)
        gap_wait_s = self.config.gap_wait_s
        batch_size = self.config.batch_size
        locked = None
        try:
            locked = await conn.fetch(
                _CANDIDATES, url, gap_wait_s, batch_size, _CANDIDATE_WINDOW * batch_size
            )
            if not locked:
                return 0
            orders = list(dict.fromkeys(r[0] for r in locked))
            rows = await conn.fetch(_CLAIM, url, gap_wait_s, orders)
            if not rows:
                return 0
            claimed = [_Claimed(r[0], r[1], r[2], r[3], r[4], r[5].encode()) for r in rows]
            key, now = self.config.key, int(time.time())
            stamp = str(now)
            messages = [
                (
                    {
                        "webhook-id": c.event_id,
                        "webhook-timestamp": stamp,
                        "webhook-signature": sign(key, c.event_id, now, c.body),
                    },
                    c.body,
                )
                for c in claimed
            ]
            answers = await self._senders[url].post_many(messages)
            if all(a.ok for a in answers):
                await conn.execute(_ALL_DELIVERED, url, [c.outbox_id for c in claimed])
                self.counts.delivered += len(claimed)
            else:
                async with conn.transaction():
                    await self._record(conn, url, claimed, answers)
        finally:
            # after the commit: the next holder of a lock sees what this batch did. (The
            # pool's reset does the same if this fails; a dead connection has none left.)
            # No candidate, no lock taken.
            if locked is None or locked:
                await conn.execute("SELECT pg_advisory_unlock_all()")
        return len(claimed)

    async def _record(
        self, conn: asyncpg.Connection, url: str, claimed: list[_Claimed], answers: list[Answer]
    ) -> None:
        done = [c.outbox_id for c, a in zip(claimed, answers, strict=True) if a.ok]
        failed = [(c, a) for c, a in zip(claimed, answers, strict=True) if not a.ok]
        if done:
            await conn.execute(_DELIVERED, url, done)
            self.counts.delivered += len(done)
        gone = next((a for _, a in failed if a.gone), None)
        if failed:
            by_id = {c.outbox_id: c for c, _ in failed}
            results = await conn.fetch(
                _FAILED,
                url,
                [c.outbox_id for c, _ in failed],
                self.config.give_up_s,
                [a.error for _, a in failed],
                # a 410 disables the receiver; its event is due again as soon as it is enabled
                [0.0 if a.gone else self.config.backoff_s(c.attempts + 1) for c, a in failed],
            )
            self.counts.failed += len(failed)
            for r in results:
                if r["gave_up"]:
                    self.counts.given_up += 1
                    c = by_id[r["outbox_id"]]
                    log.warning(
                        "relay to %s: gave up on event %s (order %s, sequence %s) after %d "
                        "attempts; `flashsale events redeliver` sends it again",
                        url, c.event_id, c.order_id, c.sequence, r["attempts"],
                    )  # fmt: skip
            self._log_failures(url, len(failed), failed[0][1].error)
        if gone is not None:
            await receivers.disable(conn, url, "answered 410 Gone")
            log.error(
                "relay to %s: the receiver answered 410 Gone: disabled; "
                "`flashsale events redeliver --receiver %s --since ...` enables it again",
                url, url,
            )  # fmt: skip
        await receivers.record_health(
            conn, url, ok=bool(done), error=None if done else failed[0][1].error
        )
