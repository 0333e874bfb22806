"""The application factory: wires settings, Redis, PostgreSQL and the background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiohttp import web

from flashsale.auth import AdminAuth, ShopperAuth
from flashsale.engine.bookings import Bookings
from flashsale.engine.connection import connect_redis
from flashsale.engine.engine import Engine, FcodeLimits
from flashsale.engine.keys import Keyspace
from flashsale.engine.sweeper import Sweeper
from flashsale.engine.wire import Wire
from flashsale.http.middlewares import errors_middleware
from flashsale.http.routes import setup_routes
from flashsale.http.services import SERVICES, Services
from flashsale.metrics import http as metrics_http
from flashsale.settings import ConfirmMode, Settings
from flashsale.store.confirm import GroupCommitter
from flashsale.store.database import open_pool
from flashsale.store.migrate import migration_parameters
from flashsale.store.writer import OrderWriter

log = logging.getLogger(__name__)

BACKGROUND_TASKS = web.AppKey("background_tasks", list[asyncio.Task[None]])


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        # counting first: it sees every answer, the errors middleware's included
        middlewares=[metrics_http.count_requests, errors_middleware]
        if settings.metrics
        else [errors_middleware],
        client_max_size=settings.admin_max_body_bytes,
        handler_args={
            # after an early answer (408, 413) aiohttp reads what is left of the body before
            # it closes, 10 s by default: a slow client would hold the connection that long
            "lingering_time": 1.0,
            # bodies are decoded by read_json_object (decoding.py), strictly and within the
            # route's limit: aiohttp's decoder takes a truncated gzip body for a whole one
            "auto_decompress": False,
            # aiohttp's defaults are 8190 for both; a request line of ours is well under 4 KiB,
            # and a refused line's limit tells bad_requests.py a too-long URL (400) from a
            # too-long header (431)
            "max_line_size": 4096,
            "max_field_size": 8190,
        },
    )
    setup_routes(app)
    app.cleanup_ctx.append(_services_ctx(settings))
    app.cleanup_ctx.append(_background_ctx)
    if settings.metrics:
        metrics_http.setup(app)
    return app


def _services_ctx(settings: Settings) -> Any:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if not settings.payment_secrets:
            log.warning("FLASHSALE_PAYMENT_SECRET is not set: payment notifications are "
                        "refused (503), so no order can be paid")  # fmt: skip
        redis = connect_redis(settings)
        wire = None
        if settings.redis_client == "lean":
            if Wire.supports(settings.redis_url):
                wire = Wire(
                    settings.redis_url,
                    connect_timeout_s=min(2.0, settings.redis_timeout_s),
                    timeout_s=settings.redis_timeout_s,
                )
            else:
                log.warning("FLASHSALE_REDIS_URL is not plain redis://: the hot path uses redis-py")
        pool = await open_pool(
            settings.database_url,
            min_size=settings.pg_min_connections,
            max_size=settings.pg_max_connections,
            timeout_s=settings.pg_timeout_s,
            parameters=migration_parameters(default_currency=settings.default_currency),
        )
        engine = Engine(
            redis,
            Keyspace(settings.key_prefix),
            sold_out_recheck_s=settings.sold_out_recheck_s,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            fcode_limits=FcodeLimits(
                per_user=settings.fcode_failures_per_user,
                per_address=settings.fcode_failures_per_address,
                window_s=settings.fcode_failure_window_s,
            ),
            wire=wire,
            default_currency=settings.default_currency,
        )
        committer = GroupCommitter(pool) if settings.confirm_mode is ConfirmMode.POSTGRES else None
        app[SERVICES] = Services(
            settings=settings,
            engine=engine,
            bookings=Bookings(engine),
            pool=pool,
            shoppers=ShopperAuth(settings.token_secret),
            admin=AdminAuth(settings.admin_token),
            committer=committer,
            fcode_key=settings.fcode_key,
        )
        yield
        await pool.close()
        if wire is not None:
            await wire.close()
        await redis.aclose()

    return ctx


async def _background_ctx(app: web.Application) -> AsyncIterator[None]:
    services = app[SERVICES]
    settings = services.settings
    jobs: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
    if settings.run_writer:
        writer = OrderWriter(
            services.engine.redis,
            services.pool,
            services.engine.keys,
            batch_size=settings.writer_batch_size,
            block_ms=settings.writer_block_ms,
            reclaim_idle_ms=settings.writer_reclaim_idle_ms,
        )
        jobs.append(("order writer", writer.run))
        metrics_http.follow(app, writer=writer)
    if settings.run_sweeper:
        sweeper = Sweeper(
            services.engine,
            interval_s=settings.sweeper_interval_s,
            batch_size=settings.sweeper_batch_size,
        )
        jobs.append(("expiry sweeper", sweeper.run))
        metrics_http.follow(app, sweeper=sweeper)
    if services.committer is not None:
        jobs.append(("group committer", services.committer.run))
    tasks = [asyncio.create_task(_supervised(name, job), name=name) for name, job in jobs]
    app[BACKGROUND_TASKS] = tasks
    # Everything made so far (modules, app, pools) lives as long as the process: moved out of
    # the collector's reach, the full collections of a busy sale no longer walk it each time.
    gc.freeze()
    yield
    await stop_tasks(tasks)


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel until done. One cancel is not always enough on Python 3.11: redis-py's
    ``asyncio.wait_for`` around a socket write can swallow a cancellation that arrives just as
    the write completes, and the loop would run on (and shutdown hang) forever."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            exc = task.exception()
            if exc is not None:
                log.error("%s ended with %r", task.get_name(), exc)


async def _supervised(name: str, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a background job for the life of the app; a crash is logged and the job restarted,
    because a silently dead writer or sweeper would strand orders or units."""
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed; restarting in 1s", name)
            await asyncio.sleep(1.0)
