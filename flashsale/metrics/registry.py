"""The metrics every flashsale process keeps, named as Prometheus's guide says: namespace
``flashsale_``, base units (seconds), ``_total`` on counters, labels with bounded values only
(a route's path template, a status, an outcome word; never a user or an order).

Importing this module creates them. Under ``serve`` that happens in each child after the
parent set ``PROMETHEUS_MULTIPROC_DIR`` (see multiprocess.py), so every value lives in a
memory-mapped file of that directory and a scrape of any worker adds them up. In one process
(``--single-process``, the tests) they live in memory and :data:`REGISTRY` shows them.

The per-sale numbers kept in Redis and the PostgreSQL outbox are not here: they are read when
scraped (collect.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from flashsale.metrics.tally import REDIS_BOUNDS, REQUEST_BOUNDS

# Only flashsale's own metrics: the same set whether one process serves or several (the
# library's process and garbage-collector metrics cannot be added up across processes).
REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "flashsale_http_requests_total",
    "HTTP requests answered, by method, route (its path template) and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "flashsale_http_request_duration_seconds",
    "Time from a request's routing to its answer, by method and route.",
    ["method", "route"],
    buckets=REQUEST_BOUNDS,
    registry=REGISTRY,
)
BUYS = Counter(
    "flashsale_buys_total",
    "Buy requests by outcome: reserved (201), replayed (201 to a repeated Idempotency-Key), "
    "queued (202), or the error code answered (sold_out, limit_reached, rate_limited, ...).",
    ["outcome"],
    registry=REGISTRY,
)
PAYMENTS = Counter(
    "flashsale_payments_total",
    "Payments decided (not counting notifications sent again), by outcome "
    "(paid, paid_late, refund_required) and reason (none when paid).",
    ["outcome", "reason"],
    registry=REGISTRY,
)

REDIS_BATCH_DURATION = Histogram(
    "flashsale_redis_batch_duration_seconds",
    "Round trip of one batch of the hot path's Redis calls (one pipeline per event-loop tick).",
    buckets=REDIS_BOUNDS,
    registry=REGISTRY,
)
REDIS_BATCH_COMMANDS = Counter(
    "flashsale_redis_batch_commands_total",
    "Commands sent in the hot path's Redis batches.",
    registry=REGISTRY,
)
REDIS_BATCH_ERRORS = Counter(
    "flashsale_redis_batch_errors_total",
    "Batches of the hot path's Redis calls that failed, by kind (connection, timeout, other).",
    ["kind"],
    registry=REGISTRY,
)

WRITER_EVENTS = Counter(
    "flashsale_writer_events_written_total",
    "Order, booking and payment events the order writer committed to PostgreSQL.",
    registry=REGISTRY,
)
WRITER_DEAD_LETTERS = Counter(
    "flashsale_writer_dead_letters_total",
    "Events PostgreSQL refused for good, set aside as dead letters by the order writer.",
    registry=REGISTRY,
)
SWEEPER_EXPIRED = Counter(
    "flashsale_sweeper_expired_reservations_total",
    "Reservations the expiry sweeper found past their deadline and returned to their sale.",
    registry=REGISTRY,
)
RELAY_DELIVERIES = Counter(
    "flashsale_relay_deliveries_total",
    "Order events the relay sent to webhook receivers, by result: delivered (a 2xx answer) "
    "or failed (no answer, an error or another status; sent again later).",
    ["result"],
    registry=REGISTRY,
)
RELAY_GIVEN_UP = Counter(
    "flashsale_relay_given_up_total",
    "Order events the relay stopped retrying for a receiver (FLASHSALE_WEBHOOK_GIVE_UP_S).",
    registry=REGISTRY,
)

PG_POOL_CONNECTIONS = Gauge(
    "flashsale_postgres_pool_connections",
    "PostgreSQL connections of the processes' pools, by state (idle, in_use).",
    ["state"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
PG_POOL_MAX = Gauge(
    "flashsale_postgres_pool_max_connections",
    "Most PostgreSQL connections the processes' pools may open.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)

SERVE_RESTARTS = Counter(
    "flashsale_serve_restarts_total",
    "Processes of `flashsale serve` that ended and were started again, by kind "
    "(worker, writer, relay).",
    ["process"],
    registry=REGISTRY,
)


def add_observations(child: Histogram, buckets: Sequence[int], total: float) -> None:
    """Add many observations to a histogram series at once: ``buckets`` counts them per
    bucket (not cumulatively, in the order of the series' upper bounds) and ``total`` is
    their sum. The same as one ``observe`` each, for one write per bucket that moved.

    prometheus-client has no call for this, so it adds to the series' own values, as
    ``observe`` does (tests/test_metrics.py holds the two to the same result)."""
    if total:
        child._sum.inc(total)
    for value, count in zip(child._buckets, buckets, strict=True):
        if count:
            value.inc(count)
