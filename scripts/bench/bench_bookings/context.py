"""What the parts share: the options, the engine on the private Redis, the pool on the throwaway
database, the processes, the sales (one letter each, see scripts/bench/bookings.py) and the user
ids booked into them."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from flashsale.engine.bookings import Bookings
from flashsale.engine.connection import connect_redis
from flashsale.engine.engine import Engine
from flashsale.engine.keys import Keyspace
from flashsale.models import Admission, BookingPolicy, SaleDefinition
from flashsale.settings import Settings
from flashsale.store import sales
from flashsale.store.database import open_pool
from flashsale.store.migrate import migration_parameters

from .measure import CpuMeter, pin_threads
from .servers import Processes

STOCK_QUEUED = 100  # public units of the queued sales: ranks above 100 wait
HOUR_MS = 3_600_000


@dataclass
class Options:
    bookings: int
    live: int
    concurrency: int
    duration: int
    connections: int
    tokens: int
    buy_calls: int
    buy_concurrency: int
    small: int
    command: str


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def users(first: int, last: int, stem: str = "user") -> Iterator[str]:
    """User ids stem-0000001 ... (inclusive)."""
    return (f"{stem}-{i:07d}" for i in range(first, last + 1))


def batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def sale_definition(sale_id: str, *, starts_ms: int, stock: int, booking: bool) -> SaleDefinition:
    """A sale of ``stock`` units at ``starts_ms``, for two hours; with ``booking``, a
    booking_order queue open from a minute ago to the start."""
    policy = None
    if booking:
        policy = BookingPolicy(
            opens_ms=now_ms() - 60_000, closes_ms=starts_ms, admission=Admission.BOOKING_ORDER
        )
    return SaleDefinition(
        sale_id=sale_id, sku="bench-bk", name=f"bench-bookings {sale_id}", price_cents=100,
        stock=stock, per_user_limit=1, starts_ms=starts_ms, ends_ms=starts_ms + 2 * HOUR_MS,
        reservation_ttl_s=3600, booking=policy,
    )  # fmt: skip


class Bench:
    """The state of one run; open() before the parts, close() after."""

    def __init__(
        self, opts: Options, settings: Settings, procs: Processes, redis_pid: int,
        workdir: Path, outdir: Path,
    ) -> None:  # fmt: skip
        self.o = opts
        self.settings = settings
        self.procs = procs
        self.redis_pid = redis_pid
        self.workdir = workdir
        self.outdir = outdir
        self.tag = secrets.token_hex(3)
        self.redis = connect_redis(settings)
        self.keys = Keyspace(settings.key_prefix)
        self.engine = Engine(
            self.redis, self.keys, sold_out_recheck_s=settings.sold_out_recheck_s,
            idempotency_ttl_s=settings.idempotency_ttl_s,
        )  # fmt: skip
        self.bookings = Bookings(self.engine)
        self._pool: asyncpg.Pool | None = None
        self.pg_pids: list[int] = []

    async def open(self) -> None:
        self._pool = await open_pool(
            self.settings.database_url,
            min_size=2,
            max_size=2,
            parameters=migration_parameters(default_currency=self.settings.default_currency),
        )
        self.pg_pids = [
            r["pid"]
            for r in await self._pool.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            )
        ]

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        await self.redis.aclose()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Bench.open() first")
        return self._pool

    def sale_id(self, letter: str) -> str:
        return f"bk-{letter}-{self.tag}"

    async def create_sale(self, sale: SaleDefinition) -> None:
        await sales.insert_sale(self.pool, sale)
        await self.engine.arm_sale(sale)

    async def booking_rows(self, sale_id: str) -> int:
        """Rows of the sale in PostgreSQL's bookings table."""
        rows: int = await self.pool.fetchval(
            "SELECT count(*) FROM bookings WHERE sale_id = $1", sale_id
        )
        return rows

    def meter(self, *, pg: bool = False) -> CpuMeter:
        """CPU used by this process and Redis (and the PostgreSQL backends, with ``pg``)."""
        servers = {"Redis": [self.redis_pid]}
        if pg:
            servers["PostgreSQL backends"] = self.pg_pids
        return CpuMeter(servers)

    def pin_redis(self, cores: set[int]) -> None:
        pin_threads(self.redis_pid, cores)
