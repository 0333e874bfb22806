"""``flashsale relay``: the order events relay as a process of its own (see outbox/relay.py).

``serve`` starts FLASHSALE_RELAY_PROCESSES of them beside its workers when
FLASHSALE_WEBHOOK_URLS is set; more, on this host or others, share the work safely.
"""

from __future__ import annotations

import gc
import logging

from flashsale.metrics.publish import publishing
from flashsale.outbox.relay import Relay, RelayConfig
from flashsale.settings import Settings
from flashsale.store.database import open_pool
from flashsale.store.migrate import migration_parameters

log = logging.getLogger(__name__)


async def run_relay(settings: Settings) -> None:
    config = RelayConfig.from_settings(settings)
    # one connection per receiver: it takes in, claims and records that receiver's events
    pool = await open_pool(
        settings.database_url,
        max_size=len(config.urls),
        timeout_s=settings.pg_timeout_s,
        parameters=migration_parameters(default_currency=settings.default_currency),
    )
    log.info("order events relay started for %d receiver(s): %s", len(config.urls),
             ", ".join(config.urls))  # fmt: skip
    relay = Relay(pool, config)
    # what exists now (modules, the pool) lives as long as the process: frozen, the collector
    # stops walking it every time the events' short-lived objects trigger a collection
    gc.freeze()
    try:
        async with publishing(settings.metrics, pool=pool, relay=relay):
            await relay.run()
    finally:
        await pool.close()
