"""Webhook receivers: each URL's place in the outbox, its pending deliveries, and its health.

A receiver takes the events committed after it was first seen (``register``); ``intake`` moves
the outbox rows past its cursor into ``outbox_deliveries``, one pending row per event, in the
commit-safe order of cursor.py, so none is passed over. A delivery is pending until the relay
marks it delivered, or gives up on it. A receiver that answered 410 Gone is disabled: nothing
is taken or sent for it until ``redeliver`` re-enables it, and then everything since it was
disabled follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

# first key of the advisory locks that let one relay at a time take a receiver's events
_INTAKE_LOCK = 0x6F627831  # "obx1"

_REGISTER = """
INSERT INTO webhook_receivers (url, cursor_txid, cursor_id)
VALUES ($1, pg_snapshot_xmin(pg_current_snapshot()), 0)
ON CONFLICT (url) DO NOTHING
"""

# The cursor comes as parameters, so that the outbox is read from it by its index. One
# statement, no transaction around it: the advisory lock (one relay at a time takes a
# receiver's events) lasts as long as the statement, and the cursor moves only from where it
# was read, so a relay that read it before another moved it takes nothing twice. (The lock
# takes no transaction id, which would hold back the snapshot's xmin the statement reads by.)
_INTAKE = """
WITH batch AS (
    SELECT o.id, o.txid, o.order_id, o.sequence
    FROM outbox o
    WHERE (o.txid, o.id) > ($2::text::xid8, $3::bigint)
      AND o.txid < pg_snapshot_xmin(pg_current_snapshot())
      AND (SELECT pg_try_advisory_xact_lock($5, hashtext($1)))
    ORDER BY o.txid, o.id
    LIMIT $4
), taken AS (
    INSERT INTO outbox_deliveries (receiver, outbox_id, order_id, sequence)
    SELECT $1, id, order_id, sequence FROM batch
    ON CONFLICT DO NOTHING
), moved AS (
    UPDATE webhook_receivers w SET cursor_txid = last.txid, cursor_id = last.id
    FROM (SELECT txid, id FROM batch ORDER BY txid DESC, id DESC LIMIT 1) last
    WHERE w.url = $1 AND w.cursor_txid = $2::text::xid8 AND w.cursor_id = $3::bigint
)
SELECT count(*) FROM batch
"""

_CURSOR = """
SELECT cursor_txid::text AS txid, cursor_id, disabled_at IS NOT NULL AS disabled
FROM webhook_receivers WHERE url = $1
"""

# a success clears failing_since; the row is written only when that changes (or now and
# then), so relays sharing a receiver seldom queue on it
MARK_HEALTHY = """
UPDATE webhook_receivers SET failing_since = NULL, last_error = NULL, last_success_at = now()
WHERE url = $1 AND (failing_since IS NOT NULL OR last_success_at IS NULL
                    OR last_success_at < now() - interval '10 seconds')
"""

_STATUS = """
SELECT w.url, w.added_at, w.disabled_at, w.disabled_reason, w.failing_since, w.last_error,
       w.last_success_at,
       (SELECT count(*) FROM outbox_deliveries d
        WHERE d.receiver = w.url AND d.delivered_at IS NULL AND d.gave_up_at IS NULL) AS pending,
       (SELECT count(*) FROM outbox o
        WHERE (o.txid, o.id) > (w.cursor_txid, w.cursor_id)) AS not_taken,
       (SELECT count(*) FROM outbox_deliveries d
        WHERE d.receiver = w.url AND d.gave_up_at IS NOT NULL) AS given_up,
       (SELECT count(*) FROM outbox_deliveries d
        WHERE d.receiver = w.url AND d.delivered_at IS NOT NULL) AS delivered,
       least(
           (SELECT min(o.created_at) FROM outbox_deliveries d JOIN outbox o ON o.id = d.outbox_id
            WHERE d.receiver = w.url AND d.delivered_at IS NULL AND d.gave_up_at IS NULL),
           (SELECT o.created_at FROM outbox o WHERE (o.txid, o.id) > (w.cursor_txid, w.cursor_id)
            ORDER BY o.txid, o.id LIMIT 1)
       ) AS oldest_undelivered_at,
       now() AS now
FROM webhook_receivers w
WHERE w.url = ANY($1::text[])
ORDER BY w.url
"""

_REDELIVER = """
WITH again AS (
    INSERT INTO outbox_deliveries (receiver, outbox_id, order_id, sequence)
    SELECT w.url, o.id, o.order_id, o.sequence
    FROM webhook_receivers w JOIN outbox o ON (o.txid, o.id) <= (w.cursor_txid, w.cursor_id)
    WHERE w.url = $1 AND o.created_at >= $2
    ON CONFLICT (receiver, outbox_id) DO UPDATE
    SET delivered_at = NULL, gave_up_at = NULL, attempts = 0, first_attempt_at = NULL,
        last_attempt_at = NULL, next_attempt_at = now(), last_error = NULL
    RETURNING 1
)
SELECT count(*) FROM again
"""


@dataclass(frozen=True, slots=True)
class ReceiverStatus:
    """What ``flashsale events status`` shows of one receiver."""

    url: str
    configured: bool  # named in FLASHSALE_WEBHOOK_URLS
    added_at: datetime | None = None  # None: no relay has taken it on yet
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    failing_since: datetime | None = None
    last_error: str | None = None
    last_success_at: datetime | None = None
    backlog: int = 0  # events not yet delivered (nor given up)
    given_up: int = 0
    delivered: int = 0
    oldest_undelivered_at: datetime | None = None
    oldest_undelivered_age_s: float | None = None

    @property
    def state(self) -> str:
        if self.added_at is None:
            return "new"
        if self.disabled_at is not None:
            return "disabled"
        if self.failing_since is not None:
            return "failing"
        return "ok"

    @property
    def needs_attention(self) -> bool:
        return self.state in ("disabled", "failing") or self.given_up > 0

    def to_json(self) -> dict[str, object]:
        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat()

        return {
            "url": self.url,
            "configured": self.configured,
            "state": self.state,
            "backlog": self.backlog,
            "oldest_undelivered_at": iso(self.oldest_undelivered_at),
            "oldest_undelivered_age_s": self.oldest_undelivered_age_s,
            "delivered": self.delivered,
            "given_up": self.given_up,
            "disabled_at": iso(self.disabled_at),
            "disabled_reason": self.disabled_reason,
            "failing_since": iso(self.failing_since),
            "last_error": self.last_error,
            "last_success_at": iso(self.last_success_at),
            "added_at": iso(self.added_at),
        }


async def register(conn: asyncpg.Connection | asyncpg.Pool, url: str) -> None:
    """Make ``url`` a receiver, if it is not one yet: it gets the events committed from now."""
    await conn.execute(_REGISTER, url)


async def is_disabled(conn: asyncpg.Connection | asyncpg.Pool, url: str) -> bool:
    disabled = await conn.fetchval("SELECT disabled_at FROM webhook_receivers WHERE url = $1", url)
    return disabled is not None


async def intake(conn: asyncpg.Connection | asyncpg.Pool, url: str, limit: int) -> int | None:
    """Take up to ``limit`` new outbox rows for ``url`` as pending deliveries; how many, or
    None when the receiver is disabled (or not registered). Another relay doing the same for
    this receiver right now makes this one take nothing."""
    cursor = await conn.fetchrow(_CURSOR, url)
    if cursor is None or cursor["disabled"]:
        return None
    taken: int = await conn.fetchval(
        _INTAKE, url, cursor["txid"], cursor["cursor_id"], limit, _INTAKE_LOCK
    )
    return taken


async def remove(conn: asyncpg.Connection | asyncpg.Pool, url: str) -> None:
    """Forget ``url`` and its deliveries: a receiver that is gone for good (the demo's, on a
    port of its own)."""
    await conn.execute("DELETE FROM webhook_receivers WHERE url = $1", url)


async def disable(conn: asyncpg.Connection, url: str, reason: str) -> None:
    await conn.execute(
        "UPDATE webhook_receivers SET disabled_at = now(), disabled_reason = $2"
        " WHERE url = $1 AND disabled_at IS NULL",
        url, reason,
    )  # fmt: skip


async def record_health(conn: asyncpg.Connection, url: str, *, ok: bool, error: str | None) -> None:
    """After a batch: a success clears ``failing_since`` (``MARK_HEALTHY``); failures alone
    set it. The row is written only when that changes (or now and then), so relays sharing a
    receiver seldom queue on it."""
    if ok:
        await conn.execute(MARK_HEALTHY, url)
    else:
        await conn.execute(
            "UPDATE webhook_receivers SET failing_since = coalesce(failing_since, now()),"
            " last_error = $2 WHERE url = $1"
            " AND (failing_since IS NULL OR last_error IS DISTINCT FROM $2)",
            url, error,
        )  # fmt: skip


async def status(
    conn: asyncpg.Connection | asyncpg.Pool, configured: tuple[str, ...]
) -> list[ReceiverStatus]:
    """The configured receivers and every other one PostgreSQL knows, by URL."""
    known = await conn.fetch("SELECT url FROM webhook_receivers")
    urls = sorted({*configured, *(r["url"] for r in known)})
    rows = {r["url"]: r for r in await conn.fetch(_STATUS, urls)}
    answer = []
    for url in urls:
        r = rows.get(url)
        if r is None:
            answer.append(ReceiverStatus(url, url in configured))
            continue
        oldest = r["oldest_undelivered_at"]
        answer.append(
            ReceiverStatus(
                url=url,
                configured=url in configured,
                added_at=r["added_at"],
                disabled_at=r["disabled_at"],
                disabled_reason=r["disabled_reason"],
                failing_since=r["failing_since"],
                last_error=r["last_error"],
                last_success_at=r["last_success_at"],
                backlog=r["pending"] + r["not_taken"],
                given_up=r["given_up"],
                delivered=r["delivered"],
                oldest_undelivered_at=oldest,
                oldest_undelivered_age_s=(
                    None if oldest is None else max(0.0, (r["now"] - oldest).total_seconds())
                ),
            )
        )
    return answer


async def redeliver(pool: asyncpg.Pool, url: str, since: datetime, *, enable: bool) -> int:
    """Send ``url`` every event recorded since ``since`` again (those it has not taken yet
    follow anyway), given up ones included; with ``enable`` a disabled receiver is enabled.
    Returns how many events were queued."""
    async with pool.acquire() as conn, conn.transaction():
        await register(conn, url)
        if enable:
            await conn.execute(
                "UPDATE webhook_receivers SET disabled_at = NULL, disabled_reason = NULL"
                " WHERE url = $1",
                url,
            )
        queued: int = await conn.fetchval(_REDELIVER, url, since)
        return queued
