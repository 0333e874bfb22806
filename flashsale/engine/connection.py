"""Making the Redis client. Kept in one place so the hot path's client can be swapped."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from flashsale.settings import Settings


def connect_redis(settings: Settings) -> Redis:
    # BlockingConnectionPool: under a launch crowd a plain pool raises when full; this one makes
    # the extra callers wait for a connection instead.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_s,
        decode_responses=True,
        socket_connect_timeout=min(2.0, settings.redis_timeout_s),
        socket_timeout=settings.redis_timeout_s,
        # Every script is idempotent by request (a buy by its order id), so a command whose
        # connection broke may be sent again safely.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.01), retries=3),
        retry_on_error=[ConnectionError, TimeoutError],
        # With maintenance notifications on ("auto", the default) redis-py skips its check for
        # connections the server closed, so after a Redis restart every pooled connection would
        # fail one request before reconnecting.
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
    return Redis(connection_pool=pool)
