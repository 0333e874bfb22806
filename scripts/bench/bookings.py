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
The parts and what they share are in the package bench_bookings next to this file.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import os
import platform
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import asyncpg
import uvloop
from bench_bookings import admission, import_memory, live, report
from bench_bookings.context import STOCK_QUEUED, Bench, Options
from bench_bookings.report import BenchError, n, out, progress
from bench_bookings.servers import ROOT, Cleanup, Processes, start_redis, with_database
from redis.asyncio import Redis

from flashsale.settings import Settings

PREFIX = "bench-bk"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


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


async def run_parts(bench: Bench) -> None:
    try:
        await bench.open()
        # Redis on core 1 and this process on core 0, so that neither takes the other's time;
        # in part 5 Redis may use both cores, as in scripts/bench-buy
        bench.pin_redis({1})
        first = await import_memory.redis_alone(bench)
        await import_memory.with_postgres(bench, first.wall_s)
        await live.engine_level(bench)
        bench.pin_redis({0, 1})
        await live.over_http(bench)
        bench.pin_redis({1})
        await admission.admission_cost(bench, first.c_starts_ms)
    finally:
        await bench.close()


async def cancellable(make_bench: Callable[[], Bench]) -> None:
    """run_parts, cancelled by a signal so that every finally runs (raising from a plain signal
    handler inside the loop can leave it waiting forever); again every 0.5 s, as redis-py can
    swallow a cancellation on Python 3.11."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None

    def cancel() -> None:
        if not task.done():
            task.cancel()
            loop.call_later(0.5, cancel)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, cancel)
    await run_parts(make_bench())


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
        cleanup.create_database(database)
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
        uvloop.run(
            cancellable(lambda: Bench(opts, settings, procs, redis_proc.pid, workdir, outdir))
        )
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
        report.save(outdir / "report.txt")
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
