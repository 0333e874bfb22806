"""Making the Redis client. Kept in one place so the hot path's client can be swapped."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from flashsale.settings import Settings


def connect_redis(settings: Settings) -> Redis:
    # BlockingConnectionPool: under a launch crowd a plain pool raises when full; this one makes
    # the extra callers wait for a connection instead.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=5,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
    )
    return Redis(connection_pool=pool)
