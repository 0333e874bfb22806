"""Numbers read when /metrics is scraped, from where they live, not kept in every process.

Redis holds each sale's units, its queue and its events stream; one round trip finds the
sales (the index ``<prefix>:sales``) and Redis's clock, and one pipeline reads them all. The
PostgreSQL outbox holds what is still to be delivered to each webhook receiver. A store that
does not answer is reported as down (``flashsale_redis_up``, ``flashsale_postgres_up``), and
its numbers are left out rather than the scrape failing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.asyncio import Redis

from flashsale import __version__
from flashsale.engine.keys import Keyspace

log = logging.getLogger(__name__)

# A reservation whose deadline passed longer ago than this should have been returned by the
# expiry sweeper long since (it looks every FLASHSALE_SWEEPER_INTERVAL_S).
OVERDUE_AFTER_S = 60

# Where each unit of a sale's stock is: in exactly one of these at any time, so they add up to
# the stock (deploy/prometheus/alerts.yml checks that they do).
UNIT_STATES = ("available", "fcode_available", "reserved", "paid")
# Running totals of units that moved (in the sale hash): came back to the sale (and may have
# sold again), were bought again by a late payment, or passed from the F-code lane to the public
# one when it was released (flashsale/fcodes/release.py)
MOVED = ("expired", "cancelled", "paid_late", "fcode_released")
_QUEUED_ADMISSIONS = ("booking_order", "lottery")
_FIELDS = ("stock", *UNIT_STATES, *MOVED, "admission", "bookings", "adm_slots", "starts_ms")
_READS_PER_SALE = 5

_TIMEOUT_S = 3.0

# For each receiver of this deployment: deliveries pending, events not yet taken in for it,
# the age of the oldest of either, and its state (as `flashsale events status` counts them,
# without the totals of delivered and given-up events, which would read every row).
_RECEIVERS = """
SELECT w.url, w.disabled_at IS NOT NULL AS disabled, w.failing_since IS NOT NULL AS failing,
       (SELECT count(*) FROM outbox_deliveries d
        WHERE d.receiver = w.url AND d.delivered_at IS NULL AND d.gave_up_at IS NULL)
       + (SELECT count(*) FROM outbox o
          WHERE (o.txid, o.id) > (w.cursor_txid, w.cursor_id)) AS backlog,
       coalesce(extract(epoch FROM now() - least(
           (SELECT min(o.created_at) FROM outbox_deliveries d JOIN outbox o ON o.id = d.outbox_id
            WHERE d.receiver = w.url AND d.delivered_at IS NULL AND d.gave_up_at IS NULL),
           (SELECT o.created_at FROM outbox o WHERE (o.txid, o.id) > (w.cursor_txid, w.cursor_id)
            ORDER BY o.txid, o.id LIMIT 1)
       )), 0)::float8 AS oldest_s
FROM webhook_receivers w
WHERE w.url = ANY($1::text[])
"""


@dataclass
class SaleNumbers:
    sale_id: str
    fields: dict[str, int]
    admission: str
    events_backlog: int
    oldest_event_age_s: float
    dead_letters: int
    overdue: int


@dataclass
class ReceiverNumbers:
    receiver: str
    backlog: int
    oldest_s: float
    disabled: bool
    failing: bool


@dataclass
class Snapshot:
    """What one scrape read; a collector for prometheus-client."""

    redis_up: bool = False
    postgres_up: bool = False
    sales: list[SaleNumbers] = field(default_factory=list)
    receivers: list[ReceiverNumbers] = field(default_factory=list)

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "flashsale_build_info", "The flashsale release answering (always 1).",
            labels=["version"],
        )  # fmt: skip
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "flashsale_redis_up", "Whether Redis answered this scrape's reads (1) or not (0).",
            value=int(self.redis_up),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "flashsale_postgres_up",
            "Whether PostgreSQL answered this scrape's reads (1) or not (0).",
            value=int(self.postgres_up),
        )
        if self.redis_up:
            yield from _sale_families(self.sales)
        if self.postgres_up:
            yield from _receiver_families(self.receivers)


def _sale_families(sales: Sequence[SaleNumbers]) -> Iterable[Metric]:
    def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=["sale_id", *labels])

    stock = gauge("flashsale_sale_stock_units", "A sale's stock, F-code units included.")
    units = gauge(
        "flashsale_sale_units",
        "A sale's units by where they are (available, fcode_available, reserved, paid); "
        "they add up to its stock.",
        ["state"],
    )
    moved = {
        name: CounterMetricFamily(f"flashsale_sale_{name}_units", doc, labels=["sale_id"])
        for name, doc in (
            ("expired", "Units whose reservation expired unpaid and went back to the sale."),
            ("cancelled", "Units whose order was cancelled and went back to the sale."),
            ("paid_late", "Units a payment bought again after their reservation expired."),
            ("fcode_released", "F-code units passed to the public lane at the lane's release."),
        )
    }
    overdue = gauge(
        "flashsale_sale_reservations_overdue",
        f"Reserved orders whose deadline passed more than {OVERDUE_AFTER_S} s ago and that "
        "the expiry sweeper has not returned yet.",
    )
    dead = gauge(
        "flashsale_sale_dead_letters",
        "Events of the sale PostgreSQL refused for good (`flashsale deadletters`).",
    )
    backlog = gauge(
        "flashsale_writer_backlog_events",
        "Events of the sale in Redis not yet committed to PostgreSQL by the order writer.",
    )
    lag = gauge(
        "flashsale_writer_lag_seconds",
        "Age of the sale's oldest event not yet committed to PostgreSQL (0: none waiting).",
    )
    bookings = gauge("flashsale_sale_bookings", "Booking numbers given in a sale taking bookings.")
    queue = gauge(
        "flashsale_sale_queue_shoppers",
        "Booked shoppers of a booking queue, by state: admitted to buy, or still waiting.",
        ["state"],
    )
    for s in sales:
        sale = [s.sale_id]
        stock.add_metric(sale, s.fields["stock"])
        for state in UNIT_STATES:
            units.add_metric([s.sale_id, state], s.fields[state])
        for name, family in moved.items():
            family.add_metric(sale, s.fields[name])
        overdue.add_metric(sale, s.overdue)
        dead.add_metric(sale, s.dead_letters)
        backlog.add_metric(sale, s.events_backlog)
        lag.add_metric(sale, s.oldest_event_age_s)
        if s.admission:
            bookings.add_metric(sale, s.fields["bookings"])
        if s.admission in _QUEUED_ADMISSIONS:
            # as the stats route counts them: nobody is admitted before the sale starts
            admitted = min(s.fields["adm_slots"], s.fields["bookings"])
            if s.fields["now_ms"] < s.fields["starts_ms"]:
                admitted = 0
            queue.add_metric([s.sale_id, "admitted"], admitted)
            queue.add_metric([s.sale_id, "waiting"], s.fields["bookings"] - admitted)
    yield from (stock, units, *moved.values(), overdue, dead, backlog, lag, bookings, queue)


def _receiver_families(receivers: Sequence[ReceiverNumbers]) -> Iterable[Metric]:
    labels = ["receiver"]
    backlog = GaugeMetricFamily(
        "flashsale_outbox_backlog_events",
        "Order events not yet delivered to a webhook receiver (nor given up).",
        labels=labels,
    )
    oldest = GaugeMetricFamily(
        "flashsale_outbox_oldest_undelivered_seconds",
        "Age of the oldest order event not yet delivered to a receiver (0: none waiting).",
        labels=labels,
    )
    disabled = GaugeMetricFamily(
        "flashsale_outbox_receiver_disabled",
        "1 while a receiver is disabled (it answered 410 Gone), else 0.",
        labels=labels,
    )
    failing = GaugeMetricFamily(
        "flashsale_outbox_receiver_failing",
        "1 while a receiver's latest answers are failures, else 0.",
        labels=labels,
    )
    for r in receivers:
        backlog.add_metric([r.receiver], r.backlog)
        oldest.add_metric([r.receiver], r.oldest_s)
        disabled.add_metric([r.receiver], int(r.disabled))
        failing.add_metric([r.receiver], int(r.failing))
    yield from (backlog, oldest, disabled, failing)


async def read(
    redis: Redis, keys: Keyspace, pool: asyncpg.Pool, receivers: Sequence[str]
) -> Snapshot:
    """Read everything a scrape shows from Redis and PostgreSQL, both at once."""
    snapshot = Snapshot()
    await asyncio.gather(
        _read_redis(snapshot, redis, keys), _read_postgres(snapshot, pool, receivers)
    )
    return snapshot


async def _read_redis(snapshot: Snapshot, redis: Redis, keys: Keyspace) -> None:
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            snapshot.sales = await read_sales(redis, keys)
    except Exception as exc:  # reported as flashsale_redis_up 0; the scrape goes on
        log.warning("metrics: Redis not read: %r", exc)
        return
    snapshot.redis_up = True


async def read_sales(redis: Redis, keys: Keyspace) -> list[SaleNumbers]:
    """Every sale's numbers: one round trip for the sales and the clock, one pipeline for the
    rest."""
    async with redis.pipeline(transaction=False) as pipe:
        _ = pipe.smembers(keys.sales_index)
        _ = pipe.time()
        members, (seconds, micros) = await pipe.execute()
    now_ms = seconds * 1000 + micros // 1000
    sale_ids = sorted(cast(set[str], members))
    if not sale_ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for sale_id in sale_ids:
            k = keys.sale(sale_id)
            _ = pipe.hmget(k.sale, _FIELDS)
            _ = pipe.xlen(k.events)
            _ = pipe.xrange(k.events, count=1)
            _ = pipe.xlen(k.dead_letters)
            _ = pipe.zcount(k.deadlines, "-inf", now_ms - OVERDUE_AFTER_S * 1000)
        replies: list[Any] = await pipe.execute()
    sales = []
    for i, sale_id in enumerate(sale_ids):
        values, events, oldest, dead, overdue = replies[
            i * _READS_PER_SALE : (i + 1) * _READS_PER_SALE
        ]
        raw = dict(zip(_FIELDS, values, strict=True))
        if raw["stock"] is None:  # indexed, but its hash is gone
            continue
        admission = raw.pop("admission") or ""
        fields = {name: int(value or 0) for name, value in raw.items()}
        fields["now_ms"] = now_ms
        age_s = 0.0
        if oldest:  # the entry id is the time Redis added it, in ms
            age_s = max(0.0, (now_ms - int(oldest[0][0].partition("-")[0])) / 1000)
        sales.append(SaleNumbers(
            sale_id=sale_id, fields=fields, admission=admission, events_backlog=int(events),
            oldest_event_age_s=age_s, dead_letters=int(dead), overdue=int(overdue),
        ))  # fmt: skip
    return sales


async def _read_postgres(snapshot: Snapshot, pool: asyncpg.Pool, receivers: Sequence[str]) -> None:
    try:
        async with asyncio.timeout(_TIMEOUT_S), pool.acquire() as conn:
            if receivers:
                rows = await conn.fetch(_RECEIVERS, list(receivers))
            else:
                rows = []
                await conn.fetchval("SELECT 1")
    except Exception as exc:  # reported as flashsale_postgres_up 0; the scrape goes on
        log.warning("metrics: PostgreSQL not read: %r", exc)
        return
    snapshot.postgres_up = True
    by_label: dict[str, ReceiverNumbers] = {}
    for r in rows:
        label = receiver_label(r["url"])
        seen = by_label.get(label)
        if seen is None:
            by_label[label] = ReceiverNumbers(label, r["backlog"], r["oldest_s"], r["disabled"],
                                              r["failing"])  # fmt: skip
        else:  # two URLs that differ only in what the label leaves out: one series
            seen.backlog += r["backlog"]
            seen.oldest_s = max(seen.oldest_s, r["oldest_s"])
            seen.disabled = seen.disabled or r["disabled"]
            seen.failing = seen.failing or r["failing"]
    snapshot.receivers = sorted(by_label.values(), key=lambda r: r.receiver)


def receiver_label(url: str) -> str:
    """A receiver's URL as a label: without user, password, query or fragment, which may hold
    a secret (a token in the query string) that has no place in a monitoring system."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
