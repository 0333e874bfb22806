"""What the store-touching CLI commands share: running a job against Redis and PostgreSQL with
the exit codes 0 done, 1 failed, 2 a usage error; and a progress bar."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

    from flashsale.engine.engine import Engine
    from flashsale.settings import Settings

PROGRESS_MIN = 10_000  # no bar for smaller batches


class UsageError(Exception):
    """Bad arguments: exit 2."""


Job = Callable[["asyncpg.Pool", "Engine"], Awaitable[int]]


def run_job(settings: Settings, job: Job, prog: str) -> int:
    """Run ``job`` with a Redis engine and a small PostgreSQL pool; errors become a message on
    stderr, prefixed with ``prog``, and exit code 2 (usage) or 1 (failed)."""
    from asyncpg import PostgresError
    from redis.exceptions import RedisError

    from flashsale import errors

    async def main() -> int:
        from flashsale.engine.connection import connect_redis
        from flashsale.engine.engine import Engine
        from flashsale.engine.keys import Keyspace
        from flashsale.store.database import open_pool
        from flashsale.store.migrate import migration_parameters

        redis = connect_redis(settings)
        engine = Engine(
            redis,
            Keyspace(settings.key_prefix),
            sold_out_recheck_s=settings.sold_out_recheck_s,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            default_currency=settings.default_currency,
        )
        try:
            pool = await open_pool(
                settings.database_url,
                max_size=2,
                parameters=migration_parameters(default_currency=settings.default_currency),
            )
            try:
                return await job(pool, engine)
            finally:
                await pool.close()
        finally:
            await redis.aclose()

    try:
        return asyncio.run(main())
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except errors.InvalidRequest as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return 2
    except errors.FlashsaleError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, RedisError, PostgresError) as exc:
        print(f"{prog}: a store or file failed: {exc!r}", file=sys.stderr)
        return 1


class ProgressBar:
    """One line on stderr, redrawn at most every half second; only on a terminal."""

    def __init__(self, stream: IO[str] = sys.stderr) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.phase = ""
        self.last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled or total < PROGRESS_MIN:
            return
        now = time.monotonic()
        if phase == self.phase and done < total and now - self.last < 0.5:
            return
        if phase != self.phase and self.phase:
            self.stream.write("\n")
        self.phase, self.last = phase, now
        filled = 30 * done // total
        self.stream.write(
            f"\r{phase:<9} [{'#' * filled}{'.' * (30 - filled)}] {100 * done // total:3d}% "
            f"{done:,}/{total:,}"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.phase:
            self.stream.write("\n")
            self.stream.flush()
        self.phase = ""
