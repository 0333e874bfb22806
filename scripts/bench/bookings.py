"""The booking-queue benchmark behind scripts/bench-bookings (see there for the options).

Everything runs against servers of its own: a private ``redis-server`` (free port, no
persistence, default configuration otherwise) and a throwaway database
``flashsale_bench_<random>`` on the PostgreSQL server of FLASHSALE_DATABASE_URL, dropped at
the end. Every process started here is stopped in a ``finally`` (and an ``atexit`` hook), and
gets SIGKILL from the kernel if this process dies first (``setpriv --pdeathsig``).

The parts, in the order they run (and reported):

1. Import, Redis alone: ``Bookings.book_many`` in batches of 5,000 (the importer's batch), one
   call at a time, into sale B (booking_order, starts in an hour); then the same into sale C,
   whose start is set 1.5 times that import's time ahead, so that C is a started queue with N
   bookings for part 6 (and the Redis-alone figure gets a second sample).
2. Redis memory of sale B's bookings: ``INFO memory`` before, half way and after; the bucket
   keys, their encodings, lengths and ``MEMORY USAGE``.
3. Import with PostgreSQL: ``import_bookings`` (Redis + COPY) of the same N users into sale A
   (starts in an hour).
4. Live bookings, engine level: ``Bookings.book`` for M new users on sale A from many tasks on
   one uvloop event loop; then ``OrderWriter.drain`` carries their events to PostgreSQL.
5. Live bookings over HTTP: ``flashsale serve`` on core 0, wrk on core 1, POST
   /v1/sales/A/bookings with a distinct user's token per request; then a bare aiohttp app on
   core 0 with the same requests, for the ratio.
6. The admission decision: ``Engine.buy`` by booked shoppers who are not admitted yet (queued
   answer) in a started queue of 10,000 bookings (sale D) and of N (sale C), against a plain
   reservation in a sale without booking (sale E).

This process is pinned to core 0 throughout (it is idle while the service and wrk run).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import itertools
import os
import platform
import resource
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import uvloop
from redis.asyncio import Redis

from flashsale import errors
from flashsale.auth import issue_token
from flashsale.booking.importer import DEFAULT_BATCH, ImportReport, import_bookings
from flashsale.engine.bookings import Bookings
from flashsale.engine.connection import connect_redis
from flashsale.engine.engine import BuyOutcome, Engine, Queued
from flashsale.engine.keys import BOOKING_BUCKETS, Keyspace
from flashsale.models import Admission, BookingPolicy, SaleDefinition
from flashsale.settings import Settings
from flashsale.store import sales
from flashsale.store.database import open_pool
from flashsale.store.writer import OrderWriter

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "bench-bk"
STOCK_QUEUED = 100  # public units of the queued sales: ranks above 100 wait
HOUR_MS = 3_600_000
SETPRIV = shutil.which("setpriv")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

HELLO_APP = """
import sys

import orjson
import uvloop
from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps({"ok": True}), content_type="application/json")


app = web.Application()
app.router.add_route("*", "/{tail:.*}", hello)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), loop=uvloop.new_event_loop(),
            access_log=None, print=lambda *_: None)
"""


def progress(message: str) -> None:
    print(f"bench-bookings: {message}", file=sys.stderr, flush=True)


def out(line: str = "") -> None:
    print(line, flush=True)
    REPORT.append(line)


REPORT: list[str] = []


class BenchError(RuntimeError):
    """The benchmark could not go on; the message says why."""


# -- processes ---------------------------------------------------------------------------------


class Processes:
    """Every process the benchmark starts; stop_all() ends those still running."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: list[str], *, log: Path, core: int | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:  # fmt: skip
        command = list(args)
        if core is not None:
            command = ["taskset", "-c", str(core), *command]
        if SETPRIV is not None:
            # SIGKILL from the kernel if this process dies without cleaning up
            command = [SETPRIV, "--pdeathsig", "KILL", "--", *command]
        with log.open("ab") as f:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                cwd=ROOT,
            )  # fmt: skip
        self.live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.live)):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout_s=5.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_redis(procs: Processes, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """redis-server on a free port, no RDB, no AOF, the default configuration otherwise."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed")
    log = workdir / "redis.log"
    for _ in range(5):
        port = free_port()
        proc = procs.start(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), "--logfile", str(log)],
            log=workdir / "redis.out",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return proc, port
            except OSError:
                pass
            time.sleep(0.02)
        procs.stop(proc)
        if "Address already in use" not in log.read_text(errors="replace"):
            raise BenchError(f"redis-server did not start; see {log}")
    raise BenchError("redis-server found no free port")


async def wait_http(url: str, seconds: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"{url}: the server exited; see its log {log}")
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise BenchError(f"{url} did not answer 200 within {seconds}s; see {log}")


# -- the throwaway database --------------------------------------------------------------------


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


async def create_database(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(with_database(server_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def drop_database(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(with_database(server_url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class Cleanup:
    """Stops the processes and drops the database, once, from ``finally`` or ``atexit``."""

    def __init__(self, procs: Processes, server_url: str, workdir: Path) -> None:
        self.procs = procs
        self.server_url = server_url
        self.workdir = workdir
        self.database: str | None = None
        self.done = False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        self.procs.stop_all()
        if self.database is not None:
            try:
                asyncio.run(drop_database(self.server_url, self.database))
                progress(f"dropped database {self.database}")
            except Exception as exc:
                progress(f"could not drop database {self.database}: {exc!r} (drop it by hand)")
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- figures -----------------------------------------------------------------------------------


def pct(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


def n(x: int | float) -> str:
    return f"{x:,.0f}"


@dataclass
class CpuMeter:
    """CPU seconds used meanwhile by this process and by the server processes given."""

    servers: dict[str, list[int]]
    t0: float = 0.0
    own0: float = 0.0
    base: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> CpuMeter:
        self.t0 = time.perf_counter()
        self.own0 = time.process_time()
        self.base = {k: sum(map(cpu_seconds, pids)) for k, pids in self.servers.items()}
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.own = time.process_time() - self.own0
        self.used = {
            k: sum(map(cpu_seconds, pids)) - self.base[k] for k, pids in self.servers.items()
        }

    def line(self) -> str:
        parts = [f"this process {self.own:.1f} s ({100 * self.own / self.wall:.0f}% of core 0)"]
        for name, used in self.used.items():
            parts.append(f"{name} {used:.1f} s ({100 * used / self.wall:.0f}% of a core)")
        return "CPU used: " + ", ".join(parts)


async def reset_stats(redis: Redis) -> None:
    await redis.config_resetstat()


async def evalsha_stats(redis: Redis) -> tuple[int, float]:
    """(calls, microseconds inside Redis) of EVALSHA since the last reset."""
    stats = await redis.info("commandstats")
    entry = stats.get("cmdstat_evalsha") or {"calls": 0, "usec": 0}
    return int(entry["calls"]), float(entry["usec"])


async def used_memory(redis: Redis) -> tuple[int, int]:
    info = await redis.info("memory")
    return int(info["used_memory"]), int(info["used_memory_rss"])


# -- the benchmark -----------------------------------------------------------------------------


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


def users(first: int, last: int, stem: str = "user") -> Iterator[str]:
    """User ids stem-0000001 ... (inclusive)."""
    return (f"{stem}-{i:07d}" for i in range(first, last + 1))


def batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def sale_definition(sale_id: str, *, starts_ms: int, stock: int, booking: bool) -> SaleDefinition:
    now = time.time_ns() // 1_000_000
    policy = None
    if booking:
        policy = BookingPolicy(
            opens_ms=now - 60_000, closes_ms=starts_ms, admission=Admission.BOOKING_ORDER
        )
    return SaleDefinition(
        sale_id=sale_id, sku="bench-bk", name=f"bench-bookings {sale_id}", price_cents=100,
        stock=stock, per_user_limit=1, starts_ms=starts_ms, ends_ms=starts_ms + 2 * HOUR_MS,
        reservation_ttl_s=3600, booking=policy,
    )  # fmt: skip


class Bench:
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
        self.pool: asyncpg.Pool | None = None
        self.pg_pids: list[int] = []

    def pin_redis(self, cores: set[int]) -> None:
        """Every thread of the Redis server on ``cores``."""
        for task in os.listdir(f"/proc/{self.redis_pid}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task), cores)

    def sale_id(self, letter: str) -> str:
        return f"bk-{letter}-{self.tag}"

    async def create_sale(self, sale: SaleDefinition) -> None:
        assert self.pool is not None
        await sales.insert_sale(self.pool, sale)
        await self.engine.arm_sale(sale)

    def meter(self, *, pg: bool = False) -> CpuMeter:
        servers = {"Redis": [self.redis_pid]}
        if pg:
            servers["PostgreSQL backends"] = self.pg_pids
        return CpuMeter(servers)

    async def run(self) -> None:
        self.pool = await open_pool(self.settings.database_url, min_size=2, max_size=2)
        try:
            self.pg_pids = [
                r["pid"]
                for r in await self.pool.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                )
            ]
            # Redis on core 1 and this process on core 0, so that neither takes the other's
            # time; in part 5 Redis may use both cores, as in scripts/bench-buy
            self.pin_redis({1})
            await self.redis_alone()
            await self.with_postgres()
            await self.live_engine()
            self.pin_redis({0, 1})
            await self.live_http()
            self.pin_redis({1})
            await self.admission_cost()
        finally:
            await self.pool.close()
            await self.redis.aclose()

    # 1 and 2 -- Redis alone, memory ------------------------------------------------------------

    async def import_redis_only(self, sale_id: str, count: int, stem: str = "user") -> tuple[
        CpuMeter, int, float, list[tuple[int, int, int]]
    ]:  # fmt: skip
        """book_many in batches, one at a time, as the importer does; (cpu, evalsha calls,
        Redis usec, [(bookings done, used_memory, rss)] at the start, half way and the end)."""
        memory = [(0, *await used_memory(self.redis))]
        await reset_stats(self.redis)
        done, half, new = 0, count // 2, 0
        with self.meter() as cpu:
            for batch in batches(users(1, count, stem), DEFAULT_BATCH):
                result = await self.bookings.book_many(sale_id, batch)
                new += result.new
                done += len(batch)
                if done - len(batch) < half <= done and done < count:
                    memory.append((done, *await used_memory(self.redis)))
        calls, usec = await evalsha_stats(self.redis)
        memory.append((done, *await used_memory(self.redis)))
        if new != count:
            raise BenchError(f"sale {sale_id}: {new} new bookings, expected {count}")
        return cpu, calls, usec, memory

    async def redis_alone(self) -> None:
        count = self.o.bookings
        now = time.time_ns() // 1_000_000
        b = self.sale_id("b")
        await self.create_sale(sale_definition(b, starts_ms=now + HOUR_MS, stock=1, booking=True))
        progress(f"part 1: book_many of {n(count)} bookings into sale {b} (Redis alone)")
        cpu, calls, usec, memory = await self.import_redis_only(b, count)
        progress(f"part 2: {cpu.wall:.1f} s; looking at the buckets")
        buckets = await self.bucket_stats(b)

        # sale C: the same import, into a queue that starts soon after it (part 6)
        c = self.sale_id("c")
        self.c_starts_ms = time.time_ns() // 1_000_000 + int(1500 * cpu.wall) + 15_000
        await self.create_sale(
            sale_definition(c, starts_ms=self.c_starts_ms, stock=STOCK_QUEUED, booking=True)
        )
        progress(f"part 1: the same into sale {c}, which starts at +{1.5 * cpu.wall + 15:.0f} s")
        try:
            cpu2, _, usec2, _ = await self.import_redis_only(c, count)
        except errors.BookingClosed as exc:
            raise BenchError(f"sale {c} started before its import ended: {exc}") from None

        (_, m0, r0), (_, m_half, _), (_, m1, r1) = memory[0], memory[-2], memory[-1]
        half_done = memory[-2][0]
        self.import_redis = cpu
        out(
            f"== 1. Import, Redis alone: Bookings.book_many in batches of {n(DEFAULT_BATCH)}, "
            "one call at a time (as the importer)"
        )
        out(f"  {n(count)} bookings into sale {b} (booking_order, starts in an hour)")
        for label, c_ in (("run 1", cpu), ("run 2", cpu2)):
            usec_ = usec if c_ is cpu else usec2
            out(
                f"  {label}              {c_.wall:.2f} s = {n(count / c_.wall)} bookings/s; "
                f"inside Redis {usec_ / 1e6:.2f} s "
                f"({1000 * usec_ / count:.0f} ns a booking)"
            )
        out(
            f"  run 2 is sale {c}, armed to start {1.5 * cpu.wall + 15:.0f} s later, "
            "the big queue of part 6"
        )
        out(f"  {cpu.line()} (run 1)")
        out(f"  book_many calls      {n(calls)}")
        out()
        out(f"== 2. Redis memory of {n(count)} bookings (sale {b}, INFO memory used_memory)")
        out(
            f"  used_memory          {m0 / 2**20:.1f} MiB -> {m1 / 2**20:.1f} MiB: "
            f"+{(m1 - m0) / 2**20:.1f} MiB = {(m1 - m0) / count:.1f} bytes per booking "
            "(target: under 100)"
        )
        if len(memory) == 3 and half_done < count:
            marginal = (m1 - m_half) / (count - half_done)
            out(
                f"  second half only     {marginal:.1f} bytes per booking "
                f"(from {n(half_done)} to {n(count)}: without the fixed cost of the bucket "
                "keys)"
            )
        out(f"  used_memory_rss      +{(r1 - r0) / 2**20:.1f} MiB")
        for line in buckets:
            out(line)
        out()

    async def bucket_stats(self, sale_id: str) -> list[str]:
        k = self.keys.sale(sale_id)
        pattern = k.booking_bucket(0)[:-1] + "*"
        names = [key async for key in self.redis.scan_iter(match=pattern, count=10_000)]
        encodings: Counter[str] = Counter()
        lengths: list[int] = []
        sizes: list[int] = []
        for chunk in batches(names, 10_000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in chunk:
                    _ = pipe.object("encoding", key)
                    _ = pipe.hlen(key)
                    _ = pipe.memory_usage(key, samples=0)
                replies = await pipe.execute()
            for i in range(0, len(replies), 3):
                encodings[str(replies[i])] += 1
                lengths.append(int(replies[i + 1]))
                sizes.append(int(replies[i + 2]))
        if not names:
            return ["  no bucket keys found"]
        limits = await self.redis.config_get("hash-max-listpack-*")
        limit = ", ".join(f"{k} {v}" for k, v in sorted(limits.items()))
        lengths.sort()
        mid = len(names) // 2
        sample = names[mid]
        sample_enc, sample_len, sample_size = (
            await self.redis.object("encoding", sample),
            await self.redis.hlen(sample),
            int(await self.redis.memory_usage(sample, samples=0) or 0),
        )
        total = sum(lengths)
        enc = ", ".join(f"{name} {n(count)}" for name, count in encodings.most_common())
        return [
            f"  bucket keys          {n(len(names))} of {n(BOOKING_BUCKETS)} "
            f"(SCAN MATCH {pattern})",
            f"  encodings            {enc} (OBJECT ENCODING of every bucket)",
            f"  bookings a bucket    min {lengths[0]}, median {pct(lengths, 50):.0f}, "
            f"mean {total / len(names):.1f}, p99 {pct(lengths, 99):.0f}, max {lengths[-1]} "
            f"(the server's {limit})",
            f"  MEMORY USAGE         sample {sample}: {sample_enc}, {sample_len} bookings, "
            f"{sample_size} bytes ({sample_size / max(sample_len, 1):.1f} a booking)",
            f"  MEMORY USAGE, sum    {sum(sizes) / 2**20:.1f} MiB over all buckets = "
            f"{sum(sizes) / max(total, 1):.1f} bytes per booking "
            f"(mean {sum(sizes) / len(names):.0f} bytes a bucket)",
        ]  # fmt: skip

    # 1 (cont.) -- Redis + PostgreSQL ------------------------------------------------------------

    async def with_postgres(self) -> None:
        assert self.pool is not None
        count = self.o.bookings
        a = self.a = self.sale_id("a")
        now = time.time_ns() // 1_000_000
        await self.create_sale(sale_definition(a, starts_ms=now + HOUR_MS, stock=1, booking=True))
        progress(f"part 3: import_bookings of {n(count)} users into sale {a} (Redis + PostgreSQL)")
        step = max(1, count // 10 // DEFAULT_BATCH) * DEFAULT_BATCH
        started = time.perf_counter()

        def on_batch(report: ImportReport) -> None:
            if report.total % step == 0:
                progress(f"  {n(report.total)} after {time.perf_counter() - started:.1f} s")

        await reset_stats(self.redis)
        with self.meter(pg=True) as cpu:
            report = await import_bookings(
                self.bookings, self.pool, a, users(1, count), on_batch=on_batch
            )
        calls, usec = await evalsha_stats(self.redis)
        rows = await self.pool.fetchval("SELECT count(*) FROM bookings WHERE sale_id = $1", a)
        if report.new != count or rows != count:
            raise BenchError(f"import: {report.new} new, {rows} rows, expected {count}")
        alone = self.import_redis.wall
        out(
            f"== 3. Import with PostgreSQL: import_bookings (book_many + COPY, batches of "
            f"{n(DEFAULT_BATCH)}, Redis books batch n+1 while PostgreSQL writes batch n)"
        )
        out(f"  {n(count)} bookings into sale {a} (booking_order, starts in an hour)")
        out(
            f"  whole import         {cpu.wall:.2f} s = {n(count / cpu.wall)} bookings/s "
            f"({n(rows)} rows in PostgreSQL, {n(report.new)} new in Redis)"
        )
        out(f"  inside Redis         {usec / 1e6:.2f} s ({n(calls)} book_many calls)")
        out(
            f"  Redis alone          {alone:.2f} s (part 1, run 1): PostgreSQL adds "
            f"{cpu.wall - alone:.2f} s "
            f"({100 * (cpu.wall - alone) / cpu.wall:.0f}% of the import)"
        )
        out(f"  {cpu.line()}")
        out()

    # 3 -- live bookings ------------------------------------------------------------------------

    async def live_engine(self) -> None:
        assert self.pool is not None
        a, count = self.a, self.o.live
        progress(
            f"part 4: Bookings.book for {n(count)} new users on sale {a}, "
            f"{self.o.concurrency} tasks"
        )
        todo = users(1, count, "live")
        latencies: list[float] = []
        answers: Counter[str] = Counter()

        async def worker() -> None:
            for user in todo:
                t0 = time.perf_counter()
                try:
                    booking = await self.bookings.book(a, user)
                    answers["new" if booking.new else "exists"] += 1
                except errors.FlashsaleError as exc:
                    answers[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - t0)

        await reset_stats(self.redis)
        with self.meter() as cpu:
            await asyncio.gather(*(worker() for _ in range(self.o.concurrency)))
        calls, usec = await evalsha_stats(self.redis)
        latencies.sort()
        stream = self.keys.sale(a).events
        backlog = await self.redis.xlen(stream)

        progress(f"part 4: the order writer carries {n(backlog)} booking events to PostgreSQL")
        writer = OrderWriter(
            self.redis, self.pool, self.keys, batch_size=self.settings.writer_batch_size
        )
        with self.meter(pg=True) as wcpu:
            written = await writer.drain()
        rows = await self.pool.fetchval("SELECT count(*) FROM bookings WHERE sale_id = $1", a)

        out(
            "== 4. Live bookings, engine level: Bookings.book (book.lua: HGET, HMGET, HINCRBY, "
            "HSET, XADD)"
        )
        out(
            f"  {n(count)} new users on sale {a} (already {n(self.o.bookings)} bookings), "
            f"{self.o.concurrency} tasks on one uvloop loop, a redis-py pool of "
            f"{self.settings.redis_max_connections} connections (one a task)"
        )
        out(f"  bookings/s           {n(count / cpu.wall)} ({cpu.wall:.2f} s)")
        out(
            f"  latency p50 / p99    {1000 * pct(latencies, 50):.2f} ms / "
            f"{1000 * pct(latencies, 99):.2f} ms (max {1000 * latencies[-1]:.2f} ms)"
        )
        out(f"  inside Redis         {usec / max(calls, 1):.1f} us a call ({n(calls)} calls)")
        out(f"  answers              {', '.join(f'{k} {n(v)}' for k, v in answers.items())}")
        out(f"  {cpu.line()}")
        out(
            f"  then OrderWriter.drain (batches of {self.settings.writer_batch_size}): "
            f"{n(written)} events in {wcpu.wall:.2f} s = {n(written / wcpu.wall)} bookings/s "
            f"into PostgreSQL; rows of sale {a}: {n(rows)} (expected "
            f"{n(self.o.bookings + count)})"
        )
        out(f"  {wcpu.line()}")
        out()
        if answers["new"] != count or rows != self.o.bookings + count:
            raise BenchError(f"live bookings: {answers}, {rows} rows")

    async def live_http(self) -> None:
        assert self.pool is not None
        wrk = shutil.which("wrk")
        out(
            f"== 5. Live bookings over HTTP: POST /v1/sales/{self.a}/bookings, one "
            "`flashsale serve` on core 0, wrk on core 1"
        )
        if wrk is None:
            out("  SKIPPED: wrk is not installed (apt-get install -y wrk)")
            out()
            return
        a = self.a
        tokens = self.workdir / "tokens.txt"
        progress(f"part 5: minting {n(self.o.tokens)} shopper tokens")
        ttl = self.o.duration + 7200
        with tokens.open("w") as f:
            for user in users(1, self.o.tokens, "web"):
                f.write(issue_token(self.settings.token_secret, user, ttl_s=ttl) + "\n")

        env = {
            **os.environ,
            "FLASHSALE_REDIS_URL": self.settings.redis_url,
            "FLASHSALE_DATABASE_URL": self.settings.database_url,
            "FLASHSALE_KEY_PREFIX": self.settings.key_prefix,
            "FLASHSALE_TOKEN_SECRET": self.settings.token_secret,
            "FLASHSALE_ADMIN_TOKEN": self.settings.admin_token,
        }
        port = free_port()
        log = self.outdir / "service.log"
        service = self.procs.start(
            [str(ROOT / ".venv/bin/flashsale"), "serve", "--host", "127.0.0.1",
             "--port", str(port)], log=log, core=0, env=env,
        )  # fmt: skip
        path = f"/v1/sales/{a}/bookings"
        try:
            await wait_http(f"http://127.0.0.1:{port}/healthz", 30, service, log)
            before = await self.redis.hget(self.keys.sale(a).sale, "bookings")
            progress(f"part 5: wrk, {self.o.duration} s, {self.o.connections} connections")
            book = await self.wrk(wrk, "bookings", port, path, tokens, service.pid)
            progress("part 5: waiting for the service's writer to empty the events stream")
            stream = self.keys.sale(a).events
            t0 = time.perf_counter()
            while (left := await self.redis.xlen(stream)) > 0:
                if time.perf_counter() - t0 > 120:
                    break
                await asyncio.sleep(0.05)
            drain_s = time.perf_counter() - t0
        finally:
            self.procs.stop(service)
        after = int(await self.redis.hget(self.keys.sale(a).sale, "bookings") or 0)
        rows = await self.pool.fetchval("SELECT count(*) FROM bookings WHERE sale_id = $1", a)

        hello_port = free_port()
        hello_log = self.outdir / "hello.log"
        hello = self.procs.start(
            [sys.executable, "-c", HELLO_APP, str(hello_port)], log=hello_log, core=0
        )
        try:
            await wait_http(f"http://127.0.0.1:{hello_port}/", 15, hello, hello_log)
            progress("part 5: the same requests to a bare aiohttp app")
            hi = await self.wrk(wrk, "hello", hello_port, path, tokens, hello.pid)
        finally:
            self.procs.stop(hello)
        tokens.unlink()

        created = int(book["status"].get("201", 0))
        total = sum(int(v) for v in book["status"].values())
        secs = float(book["duration_s"])
        pool = env.get("FLASHSALE_REDIS_MAX_CONNECTIONS") or Settings().redis_max_connections
        out(
            f"  {n(self.o.tokens)} distinct shoppers (pre-minted HS256 tokens), "
            f"{self.o.connections} connections, {self.o.duration} s; the service's order writer "
            f"and sweeper run as usual; its redis-py pool: {pool} connections"
        )
        self.wrk_lines(book)
        out(
            f"  bookings/s           {created / secs:,.1f} ({n(created)} answered 201 in "
            f"{secs:.2f} s; {100 * created / max(total, 1):.1f}% of the answers)"
        )
        out(
            f"  after the run        Redis counter {n(int(before or 0))} -> {n(after)}; "
            f"events stream {'empty' if left == 0 else f'still {n(left)}'} after "
            f"{drain_s:.1f} s; PostgreSQL rows of the sale {n(rows)}"
            f"{'' if rows == after else ' (MISMATCH)'}"
        )
        if log.exists():
            bad = [ln for ln in log.read_text(errors="replace").splitlines()
                   if any(w in ln for w in ("ERROR", "Traceback", "WARNING"))]  # fmt: skip
            if bad:
                out(f"  service log          {len(bad)} warning/error line(s), see {log}")
        out("  -- the same requests to a bare aiohttp + uvloop + orjson app on core 0")
        self.wrk_lines(hi)
        ratio = float(book["rps"]) / float(hi["rps"])
        out(f"  bookings/hello       {ratio:.3f} ({book['rps']} / {hi['rps']} requests/s)")
        out()

    async def wrk(
        self, wrk: str, name: str, port: int, path: str, tokens: Path, server_pid: int
    ) -> dict[str, Any]:
        """Run wrk on core 1 with scripts/bench/buy.lua; its BENCH lines, and CPU use."""
        result_file = self.outdir / f"{name}.txt"
        meter = CpuMeter({"server": [server_pid], "Redis": [self.redis_pid]})
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with meter:
            proc = self.procs.start(
                [wrk, "--threads", "1", "--connections", str(self.o.connections),
                 "--duration", f"{self.o.duration}s", "--timeout", "10s", "--latency",
                 "--script", str(ROOT / "scripts/bench/buy.lua"), f"http://127.0.0.1:{port}",
                 "--", str(tokens), path, "1"],
                log=result_file, core=1,
            )  # fmt: skip
            try:
                await asyncio.to_thread(proc.wait, self.o.duration + 60)
            except subprocess.TimeoutExpired:
                raise BenchError(f"wrk did not end; see {result_file}") from None
            finally:
                self.procs.stop(proc)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        text = result_file.read_text(errors="replace")
        if proc.returncode != 0:
            raise BenchError(f"wrk failed ({proc.returncode}):\n{text}")
        fields: dict[str, Any] = {"status": {}, "extra": []}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3 or parts[0] != "BENCH":
                continue
            if parts[1] == "status":
                fields["status"][parts[2]] = parts[3]
            elif parts[1] == "socket_errors":
                fields["extra"].append(" ".join(parts[1:]))
            elif parts[1] == "wrapped":
                fields["extra"].append(f"token list restarted {parts[5]} time(s)")
            else:
                fields[parts[1]] = parts[2]
        if "rps" not in fields:
            raise BenchError(f"wrk printed no figures:\n{text}")
        secs = float(fields["duration_s"])
        wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        fields["cpu"] = (
            f"server {100 * meter.used['server'] / secs:.0f}% of core 0, wrk "
            f"{100 * wrk_cpu / secs:.0f}% of core 1, Redis {100 * meter.used['Redis'] / secs:.0f}"
            "% of a core (unpinned)"
        )
        fields["generator_bound"] = wrk_cpu / secs >= 0.9
        return fields

    def wrk_lines(self, f: dict[str, Any]) -> None:
        statuses = " ".join(f"{code}={n(int(v))}" for code, v in sorted(f["status"].items()))
        out(f"  requests/s           {f['rps']}")
        out(f"  latency p50 / p99    {f['p50_ms']} ms / {f['p99_ms']} ms (max {f['max_ms']} ms)")
        out(f"  status counts        {statuses}")
        out(f"  CPU busy             {f['cpu']}")
        for extra in f["extra"]:
            out(f"  {extra}")
        if f["generator_bound"]:
            out("  WARNING: wrk used >= 90% of its core: these figures may be GENERATOR-BOUND")

    # 4 -- the admission decision ---------------------------------------------------------------

    async def admission_cost(self) -> None:
        calls, small = self.o.buy_calls, self.o.small
        d, e, c = self.sale_id("d"), self.sale_id("e"), self.sale_id("c")
        now = time.time_ns() // 1_000_000
        d_starts = now + 3000
        await self.create_sale(
            sale_definition(d, starts_ms=d_starts, stock=STOCK_QUEUED, booking=True)
        )
        progress(f"part 6: {n(small)} bookings into sale {d}, which starts in 3 s")
        for batch in batches(users(1, small, "small"), DEFAULT_BATCH):
            await self.bookings.book_many(d, batch)
        rounds = 3
        await self.create_sale(
            sale_definition(e, starts_ms=now - 60_000, stock=rounds * calls, booking=False)
        )
        wait_s = (max(d_starts, self.c_starts_ms) + 200) / 1000 - time.time()
        if wait_s > 0:
            progress(f"part 6: waiting {wait_s:.1f} s for the queues to start")
            await asyncio.sleep(wait_s)

        # booked, not admitted: booking numbers above the STOCK_QUEUED admitted at the start
        small_queued = list(users(STOCK_QUEUED + 1, small, "small"))
        big_queued = list(users(self.o.bookings - calls + 1, self.o.bookings))
        cases: list[tuple[str, str, Callable[[int], Iterator[str]], type]] = [
            (f"queued, {n(small)} bookings (sale {d})", d,
             lambda _: itertools.islice(itertools.cycle(small_queued), calls), Queued),
            (f"queued, {n(self.o.bookings)} bookings (sale {c})", c,
             lambda _: iter(big_queued), Queued),
            (f"no booking: reserved (sale {e})", e,
             lambda r: users(1, calls, f"plain{r}"), BuyOutcome),
        ]  # fmt: skip
        out(
            f"== 6. Admission decision: Engine.buy (buy.lua), {n(calls)} calls each, "
            f"{self.o.buy_concurrency} tasks, engine level"
        )
        out(
            f"  queued: booked shoppers with numbers above the {STOCK_QUEUED} admitted at the "
            "start, in a started booking_order queue: the answer is their place, nothing is "
            "written"
        )
        out("  no booking: a plain sale; every call reserves a unit (order hash, deadline, event)")
        figures: dict[str, list[tuple[float, float]]] = {}
        width = max(len(label) for label, *_ in cases)
        for r in range(1, rounds + 1):
            for label, sale_id, who, expect in cases:
                progress(f"part 6, round {r}: {label}")
                line, rate, usec = await self.buy_run(sale_id, who(r), expect)
                figures.setdefault(label, []).append((rate, usec))
                out(f"  round {r}, {label:<{width}} {line}")
        out(f"  median of the {rounds} rounds:")
        for label, runs in figures.items():
            rates, usecs = sorted(r for r, _ in runs), sorted(u for _, u in runs)
            out(
                f"    {label:<{width + 5}} {n(rates[len(rates) // 2])} calls/s, inside Redis "
                f"{usecs[len(usecs) // 2]:.1f} us a call"
            )
        out()

    async def buy_run(
        self, sale_id: str, who: Iterator[str], expect: type
    ) -> tuple[str, float, float]:
        """(a report line, calls/s, microseconds inside Redis a call)"""
        latencies: list[float] = []
        answers: Counter[str] = Counter()
        ahead: list[int] = []

        async def worker() -> None:
            for user in who:
                t0 = time.perf_counter()
                try:
                    result = await self.engine.buy(sale_id, user, 1)
                    answers[type(result).__name__] += 1
                    if isinstance(result, Queued):
                        ahead.append(result.ahead)
                except errors.FlashsaleError as exc:
                    answers[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - t0)

        await reset_stats(self.redis)
        with self.meter() as cpu:
            await asyncio.gather(*(worker() for _ in range(self.o.buy_concurrency)))
        ncalls, usec = await evalsha_stats(self.redis)
        latencies.sort()
        total = sum(answers.values())
        unexpected = total - answers[expect.__name__]
        places = f" (ahead {n(min(ahead))} to {n(max(ahead))})" if ahead else ""
        rate, per_call = total / cpu.wall, usec / max(ncalls, 1)
        line = (
            f"{n(rate)} calls/s, p50 {1000 * pct(latencies, 50):.2f} ms, "
            f"p99 {1000 * pct(latencies, 99):.2f} ms; inside Redis {per_call:.1f} us a call; "
            f"{n(answers[expect.__name__])} {expect.__name__}{places}"
            + (f"; UNEXPECTED {dict(answers)}" if unexpected else "")
        )
        return line, rate, per_call


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="scripts/bench-bookings")
    p.add_argument("--bookings", type=int, help="bookings imported (default 7,500,000)")
    p.add_argument("--quick", action="store_true", help="small sizes, for a fast check")
    p.add_argument("--live", type=int, help="live bookings, engine level (default 200,000)")
    p.add_argument("--concurrency", type=int, default=200, help="tasks for live bookings")
    p.add_argument("--duration", type=int, default=10, help="seconds of wrk")
    p.add_argument("--connections", type=int, default=100, help="wrk connections")
    p.add_argument("--tokens", type=int, help="distinct HTTP shoppers (default 100,000)")
    p.add_argument("--buy-calls", type=int, help="buys per case in part 6 (default 20,000)")
    p.add_argument("--buy-concurrency", type=int, default=100)
    p.add_argument("--small", type=int, default=10_000, help="bookings of the small queue")
    p.add_argument("--no-install", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    quick = a.quick
    opts = Options(
        bookings=a.bookings or (200_000 if quick else 7_500_000),
        live=a.live or (50_000 if quick else 200_000),
        concurrency=a.concurrency,
        duration=a.duration,
        connections=a.connections,
        tokens=a.tokens or (50_000 if quick else 100_000),
        buy_calls=a.buy_calls or (10_000 if quick else 20_000),
        buy_concurrency=a.buy_concurrency,
        small=a.small,
        command=shlex.join(["scripts/bench-bookings", *argv]),
    )
    if opts.small <= STOCK_QUEUED or opts.bookings < opts.buy_calls + STOCK_QUEUED:
        p.error(
            f"--small and --bookings must leave queued shoppers above the {STOCK_QUEUED} admitted"
        )
    return opts


def header(opts: Options, redis_version: str, pg_version: str) -> None:
    cpu_model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    wrk = shutil.which("wrk")
    wrk_version = "not installed"
    if wrk is not None:
        probe = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        wrk_version = (probe.stdout + probe.stderr).split("\n", 1)[0].split(" [", 1)[0]
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("aiohttp", "redis", "asyncpg", "uvloop")
    )
    now = datetime.now(UTC).astimezone()
    out(f"bench-bookings, {now:%Y-%m-%d %H:%M:%S %Z}")
    out(f"command: {opts.command}")
    out(
        f"machine: {os.cpu_count()} cores ({cpu_model}), {mem_kib / 2**20:.0f} GiB, "
        f"kernel {platform.release()}; load average before the run "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    out(
        f"software: Python {platform.python_version()}, {versions}, Redis {redis_version} "
        f"(private, no persistence), PostgreSQL {pg_version} (shared server, throwaway "
        f"database), {wrk_version}"
    )
    out(
        f"sizes: {n(opts.bookings)} imported bookings, {n(opts.live)} live (engine), "
        f"{n(opts.tokens)} HTTP shoppers, {n(opts.buy_calls)} buys a case"
    )
    out(
        "this process is pinned to core 0, Redis to core 1 (but to both cores in part 5, as in "
        "scripts/bench-buy); PostgreSQL is not pinned"
    )
    out()


async def versions(redis_url: str, database_url: str) -> tuple[str, str]:
    client = Redis.from_url(redis_url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    conn = await asyncpg.connect(database_url)
    try:
        pg = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return str(info["redis_version"]), str(pg).split(" ", 1)[0]


def run(opts: Options) -> int:
    started = time.monotonic()
    server_url = os.environ.get(
        "FLASHSALE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/flashsale_bench"
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    outdir = ROOT / "out" / "bench-bookings" / stamp
    outdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-bookings-"))
    procs = Processes()
    cleanup = Cleanup(procs, server_url, workdir)
    atexit.register(cleanup)
    try:
        redis_proc, port = start_redis(procs, workdir)
        database = f"flashsale_bench_{secrets.token_hex(4)}"
        cleanup.database = database
        asyncio.run(create_database(server_url, database))
        settings = Settings(
            redis_url=f"redis://127.0.0.1:{port}/0",
            database_url=with_database(server_url, database),
            token_secret=secrets.token_urlsafe(48),
            admin_token=secrets.token_urlsafe(32),
            key_prefix=PREFIX,
            # one connection per task: with fewer, redis-py's BlockingConnectionPool lets the
            # tasks that just released a connection take it again, and the others starve
            redis_max_connections=max(opts.concurrency, opts.buy_concurrency),
        )
        progress(f"private Redis on port {port}, database {database}, logs in {outdir}")
        header(opts, *asyncio.run(versions(settings.redis_url, settings.database_url)))

        async def main() -> None:
            # a signal cancels the benchmark, so that every finally runs (raising from a plain
            # signal handler inside the loop can leave it waiting forever); again every 0.5 s,
            # as redis-py can swallow a cancellation on Python 3.11
            loop, task = asyncio.get_running_loop(), asyncio.current_task()
            assert task is not None

            def cancel() -> None:
                if not task.done():
                    task.cancel()
                    loop.call_later(0.5, cancel)

            for sig in STOP_SIGNALS:
                loop.add_signal_handler(sig, cancel)
            await Bench(opts, settings, procs, redis_proc.pid, workdir, outdir).run()

        uvloop.run(main())
    except BenchError as exc:
        progress(f"FAILED: {exc}")
        return 1
    except (asyncio.CancelledError, KeyboardInterrupt):
        progress("interrupted")
        return 130
    finally:
        cleanup()
        wall = time.monotonic() - started
        out(f"wall time of the whole run: {wall:.0f} s ({wall / 60:.1f} min); logs: {outdir}")
        (outdir / "report.txt").write_text("\n".join(REPORT) + "\n")
    return 0


def on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    options = parse_args(sys.argv[1:])
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench-bookings: needs 2 cores (service on core 0, wrk on core 1)")
    os.sched_setaffinity(0, {0})
    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    sys.exit(run(options))
