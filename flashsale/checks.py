"""Checks that save a launch, shared by ``flashsale serve`` (at start) and ``flashsale doctor``.

- Redis's ``maxmemory-policy`` must be ``noeviction``: a policy that evicts keys when memory
  runs short would drop a sale's stock, a reservation or an Idempotency-Key without a word,
  and with them the promises (never oversell, never lose an order). ``serve`` refuses to start
  otherwise, unless ``FLASHSALE_ALLOW_EVICTION=1``; where ``CONFIG GET`` is not allowed (some
  managed Redis services) it can only warn.
- Redis should keep what it holds on disk (AOF, or at least RDB snapshots) when a 201 means
  "in Redis" (confirm mode ``redis``): ``serve`` warns when it does not.
- The clocks of this machine, Redis and PostgreSQL should agree: Redis's clock decides when a
  sale opens, this machine's says so in answers and in the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

from flashsale.settings import ConfirmMode, Settings

if TYPE_CHECKING:
    import asyncpg
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

OK, WARN, FAIL = "ok", "warn", "fail"
ALLOW_EVICTION_ENV = "FLASHSALE_ALLOW_EVICTION"
# beyond this, the times of a sale as Redis decides them and as answers show them disagree
CLOCK_SKEW_WARN_MS = 1000
SECRETS = ("FLASHSALE_TOKEN_SECRET", "FLASHSALE_ADMIN_TOKEN")
MAKE_SECRET = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    outcome: str  # OK, WARN or FAIL
    detail: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def eviction_allowed() -> bool:
    return os.environ.get(ALLOW_EVICTION_ENV, "") in ("1", "true", "yes")


def secrets_check() -> Check:
    """``serve`` needs the token secret and the admin token from the environment: made up per
    process, they would be known to nobody, and differ from worker to worker."""
    missing = [name for name in SECRETS if not os.environ.get(name)]
    if missing:
        return Check(
            "secrets", FAIL,
            f"{' and '.join(missing)} not set: `flashsale serve` refuses to start without "
            f"them; make each with {MAKE_SECRET}",
        )  # fmt: skip
    return Check("secrets", OK, "FLASHSALE_TOKEN_SECRET and FLASHSALE_ADMIN_TOKEN are set")


async def _config(redis: Redis, name: str) -> str | None:
    """A Redis setting, or None where CONFIG GET is not allowed."""
    from redis.exceptions import ResponseError

    try:
        reply = cast(dict[str, str], await redis.config_get(name))
    except ResponseError:  # unknown (renamed away) or not permitted (ACL)
        return None
    return reply.get(name)


async def eviction_check(redis: Redis, *, allow: bool) -> Check:
    policy = await _config(redis, "maxmemory-policy")
    if policy is None:
        return Check(
            "redis eviction", WARN,
            "CONFIG GET is not allowed on this Redis, so its maxmemory-policy cannot be read: "
            "make sure it is noeviction (an evicted stock, reservation or Idempotency-Key "
            "silently breaks the sale)",
        )  # fmt: skip
    if policy == "noeviction":
        return Check("redis eviction", OK, "maxmemory-policy noeviction")
    why = (
        f"maxmemory-policy is {policy}: when memory runs short Redis would evict keys (a "
        "sale's stock, a reservation, an Idempotency-Key) and silently break the sale "
        "(oversold, orders lost)"
    )
    if allow:
        return Check("redis eviction", WARN, f"{why}; started anyway: {ALLOW_EVICTION_ENV}=1")
    return Check(
        "redis eviction", FAIL,
        f"{why}. Set it to noeviction (CONFIG SET maxmemory-policy noeviction, and in "
        f"redis.conf), or set {ALLOW_EVICTION_ENV}=1 to start anyway",
    )  # fmt: skip


async def persistence_check(redis: Redis, confirm_mode: ConfirmMode) -> Check:
    aof, save = await _config(redis, "appendonly"), await _config(redis, "save")
    if aof is None or save is None:
        return Check(
            "redis persistence", WARN,
            "CONFIG GET is not allowed on this Redis: make sure it keeps an AOF (appendonly "
            "yes) when orders are confirmed from Redis (FLASHSALE_CONFIRM_MODE=redis)",
        )  # fmt: skip
    if aof == "yes":
        fsync = await _config(redis, "appendfsync") or "?"
        if fsync == "always":
            return Check("redis persistence", OK, "AOF, appendfsync always")
        return Check(
            "redis persistence", OK,
            f"AOF, appendfsync {fsync}: a power loss of the Redis host loses up to about a "
            "second of answered buys",
        )  # fmt: skip
    lost = "every reservation, payment and count since it started"
    what = "no persistence (no AOF, no RDB snapshot)"
    if save.strip():
        lost = "everything since its last snapshot"
        what = f"RDB snapshots only (save {save}), no AOF"
    if confirm_mode is ConfirmMode.POSTGRES:
        return Check(
            "redis persistence", OK,
            f"{what}; confirm mode postgres commits every order before its 201, but a Redis "
            f"restart loses {lost} not yet in PostgreSQL (flashsale reconcile finds it)",
        )  # fmt: skip
    return Check(
        "redis persistence", WARN,
        f"{what}: with FLASHSALE_CONFIRM_MODE=redis a 201 means \"in Redis\", and a Redis "
        f"restart loses {lost}, orders answered 201 included. Turn on appendonly yes "
        "(appendfsync always), or use FLASHSALE_CONFIRM_MODE=postgres",
    )  # fmt: skip


async def redis_clock_skew_ms(redis: Redis) -> float:
    """Redis's clock minus this machine's, in ms (measured at the middle of the round trip)."""
    before = time.time()
    seconds, micros = await redis.time()
    after = time.time()
    return (seconds + micros / 1e6 - (before + after) / 2) * 1000


async def postgres_clock_skew_ms(conn: asyncpg.Connection) -> float:
    """PostgreSQL's clock minus this machine's, in ms."""
    before = time.time()
    theirs = await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
    after = time.time()
    return (float(theirs) - (before + after) / 2) * 1000


def skew_check(name: str, skew_ms: float) -> Check:
    detail = f"{skew_ms:+.0f} ms from this machine"
    if abs(skew_ms) > CLOCK_SKEW_WARN_MS:
        return Check(
            name, WARN,
            f"{detail}: Redis's clock decides when a sale opens and ends, this machine's says "
            "so in answers and in the CLI; sync the clocks (NTP)",
        )  # fmt: skip
    return Check(name, OK, detail)


async def redis_version(redis: Redis) -> str:
    info: dict[str, Any] = await redis.info("server")
    return str(info.get("redis_version", "?"))


def serve_refusal(settings: Settings) -> str | None:
    """What makes ``serve`` refuse to start (its message), or None; warnings are logged. A
    Redis that cannot be reached now is left to the workers, which retry as they start."""
    secrets_ = secrets_check()
    if secrets_.outcome == FAIL:
        return secrets_.detail

    async def run() -> list[Check]:
        from redis.asyncio import Redis

        redis = Redis.from_url(settings.redis_url, decode_responses=True,
                               socket_connect_timeout=2, socket_timeout=5)  # fmt: skip
        try:
            return [
                await eviction_check(redis, allow=eviction_allowed()),
                await persistence_check(redis, settings.confirm_mode),
            ]
        finally:
            await redis.aclose()

    from redis.exceptions import RedisError

    try:
        checks = asyncio.run(run())
    except (RedisError, OSError) as exc:
        log.warning("Redis could not be checked now (%s); the workers retry", exc)
        return None
    for check in checks:
        if check.outcome == WARN:
            log.warning("%s: %s", check.name, check.detail)
    failed = [check.detail for check in checks if check.outcome == FAIL]
    return "; ".join(failed) or None
