"""``flashsale writer``: the order writer as a process of its own."""

from __future__ import annotations

import logging

from flashsale.engine.connection import connect_redis
from flashsale.engine.keys import Keyspace
from flashsale.metrics.publish import publishing
from flashsale.settings import Settings
from flashsale.store.database import open_pool
from flashsale.store.migrate import migration_parameters
from flashsale.store.writer import OrderWriter

log = logging.getLogger(__name__)


async def run_writer(settings: Settings, consumer: str | None = None) -> None:
    redis = connect_redis(settings)
    pool = await open_pool(
        settings.database_url,
        max_size=2,
        timeout_s=settings.pg_timeout_s,
        parameters=migration_parameters(default_currency=settings.default_currency),
    )
    writer = OrderWriter(
        redis,
        pool,
        Keyspace(settings.key_prefix),
        batch_size=settings.writer_batch_size,
        block_ms=settings.writer_block_ms,
        reclaim_idle_ms=settings.writer_reclaim_idle_ms,
        consumer=consumer,
    )
    log.info("order writer %s started", writer.consumer)
    try:
        async with publishing(settings.metrics, pool=pool, writer=writer):
            await writer.run()
    finally:
        await pool.close()
        await redis.aclose()
