"""The metrics' HTTP face: counting every answer, and ``GET /metrics``.

``GET /metrics`` answers in the Prometheus text format (or OpenMetrics, when the scraper asks
for it), guarded by the admin token unless FLASHSALE_METRICS_PUBLIC=1. It is not part of the
shopper API's OpenAPI description. With FLASHSALE_METRICS=0 nothing is counted and there is no
/metrics (the switch the overhead figure in BENCHMARKS.md was measured with).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from time import perf_counter
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from flashsale.http.middlewares import Handler
from flashsale.http.responses import ERROR_CODE
from flashsale.http.services import SERVICES
from flashsale.metrics import collect, registry
from flashsale.metrics.multiprocess import ENV
from flashsale.metrics.publish import Publisher
from flashsale.metrics.tally import TALLY

PUBLISHER = web.AppKey("metrics_publisher", Publisher)


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count each answer by route and status, time it, and a buy's by its outcome: plain int
    additions (tally.py). Outermost, so the errors middleware has made every error an
    answer already."""
    started = perf_counter()
    response = await handler(request)
    elapsed = perf_counter() - started
    route = TALLY.route_tally(request.match_info.route, request.method)
    status = response.status
    statuses = route.statuses
    statuses[status] = statuses.get(status, 0) + 1
    route.duration.observe(elapsed)
    if route.buy:
        TALLY.buy(_buy_outcome(status, response))
    return response


def _buy_outcome(status: int, response: web.StreamResponse) -> str:
    if status == 201:
        return "replayed" if "Idempotent-Replayed" in response.headers else "reserved"
    if status == 202:
        return "queued"
    return response.get(ERROR_CODE) or f"http_{status}"


def setup(app: web.Application) -> None:
    """Add /metrics and the publisher to an app whose first middleware is
    :func:`count_requests`. Call after the services' and background jobs' contexts."""
    publisher = app[PUBLISHER] = Publisher()
    publisher.show_at_zero(registry.REDIS_BATCH_ERRORS, "connection", "timeout", "other")
    publisher.show_at_zero(registry.BUYS, "reserved", "sold_out")
    app.router.add_get("/metrics", serve_metrics)
    app.cleanup_ctx.append(_publishing)


async def _publishing(app: web.Application) -> AsyncIterator[None]:
    publisher = app[PUBLISHER]
    publisher.watch_pool(app[SERVICES].pool)
    async with publisher.running():
        yield


def follow(app: web.Application, *, writer: Any = None, sweeper: Any = None) -> None:
    """Publish the totals of the app's own order writer and expiry sweeper (when it runs them
    and counts at all)."""
    publisher = app.get(PUBLISHER)
    if publisher is None:
        return
    if writer is not None:
        publisher.follow_writer(writer)
    if sweeper is not None:
        publisher.follow_sweeper(sweeper)


async def serve_metrics(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    if not services.settings.metrics_public:
        services.admin.check(request.headers.get("Authorization"))
    request.app[PUBLISHER].publish()  # this process's counts, up to now
    snapshot = await collect.read(
        services.engine.redis, services.engine.keys, services.pool, services.settings.webhook_urls
    )
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(_Scrape([_process_metrics(), snapshot]))
    response = web.Response(body=body, headers={"Content-Type": content_type})
    response.enable_compression()
    return response


def _process_metrics() -> Collector:
    """The metrics the processes keep: every process's files in multiprocess mode (the library
    decided which when it was imported, by the same variable), this process's otherwise."""
    path = os.environ.get(ENV)
    if path:
        return MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]
    return registry.REGISTRY


class _Scrape:
    """The collectors of one scrape, shown as one."""

    def __init__(self, collectors: list[Collector]) -> None:
        self.collectors = collectors

    def collect(self) -> Any:
        for collector in self.collectors:
            yield from collector.collect()
