"""Parts 4 and 5: live bookings on sale A (which already holds N imported ones), at engine level
and over HTTP."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time

from helper import free_port, write_tokens

from flashsale.settings import Settings
from flashsale.store.writer import OrderWriter

from .context import Bench, users
from .measure import evalsha_stats, reset_stats, timed_calls
from .report import BenchError, n, out, pct, progress
from .servers import BENCH_DIR, ROOT, start_server
from .wrk import run_wrk, wrk_lines


async def engine_level(bench: Bench) -> None:
    """Part 4: Bookings.book from many tasks on one loop; then OrderWriter.drain."""
    a, count, tasks = bench.sale_id("a"), bench.o.live, bench.o.concurrency
    progress(f"part 4: Bookings.book for {n(count)} new users on sale {a}, {tasks} tasks")

    async def book(user: str) -> str:
        return "new" if (await bench.bookings.book(a, user)).new else "exists"

    await reset_stats(bench.redis)
    with bench.meter() as cpu:
        latencies, answers = await timed_calls(book, users(1, count, "live"), tasks)
    calls, usec = await evalsha_stats(bench.redis)
    latencies.sort()
    backlog = await bench.redis.xlen(bench.keys.sale(a).events)

    progress(f"part 4: the order writer carries {n(backlog)} booking events to PostgreSQL")
    batch_size = bench.settings.writer_batch_size
    writer = OrderWriter(bench.redis, bench.pool, bench.keys, batch_size=batch_size)
    with bench.meter(pg=True) as wcpu:
        written = await writer.drain()
    rows = await bench.booking_rows(a)
    expected = bench.o.bookings + count

    out(
        "== 4. Live bookings, engine level: Bookings.book (book.lua: HGET, HMGET, HINCRBY, "
        "HSET, XADD)"
    )
    out(
        f"  {n(count)} new users on sale {a} (already {n(bench.o.bookings)} bookings), "
        f"{tasks} tasks on one uvloop loop, a redis-py pool of "
        f"{bench.settings.redis_max_connections} connections (one a task)"
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
        f"  then OrderWriter.drain (batches of {batch_size}): {n(written)} events in "
        f"{wcpu.wall:.2f} s = {n(written / wcpu.wall)} bookings/s into PostgreSQL; rows of "
        f"sale {a}: {n(rows)} (expected {n(expected)})"
    )
    out(f"  {wcpu.line()}")
    out()
    if answers["new"] != count or rows != expected:
        raise BenchError(f"live bookings: {answers}, {rows} rows")


async def over_http(bench: Bench) -> None:
    """Part 5: `flashsale serve` on core 0 under wrk on core 1, then a bare aiohttp app."""
    a = bench.sale_id("a")
    wrk = shutil.which("wrk")
    out(
        f"== 5. Live bookings over HTTP: POST /v1/sales/{a}/bookings, one "
        "`flashsale serve` on core 0, wrk on core 1"
    )
    if wrk is None:
        out("  SKIPPED: wrk is not installed (apt-get install -y wrk)")
        out()
        return
    settings, path = bench.settings, f"/v1/sales/{a}/bookings"
    tokens = bench.workdir / "tokens.txt"
    progress(f"part 5: minting {n(bench.o.tokens)} shopper tokens")
    ttl_s = bench.o.duration + 7200
    write_tokens(settings.token_secret, users(1, bench.o.tokens, "web"), str(tokens), ttl_s)

    env = {
        **os.environ,
        "FLASHSALE_REDIS_URL": settings.redis_url,
        "FLASHSALE_DATABASE_URL": settings.database_url,
        "FLASHSALE_KEY_PREFIX": settings.key_prefix,
        "FLASHSALE_TOKEN_SECRET": settings.token_secret,
        "FLASHSALE_ADMIN_TOKEN": settings.admin_token,
    }
    port = free_port()
    log = bench.outdir / "service.log"
    service = await start_server(
        bench.procs, [str(ROOT / ".venv/bin/flashsale"), "serve", "--host", "127.0.0.1",
                      "--port", str(port)],
        health_url=f"http://127.0.0.1:{port}/healthz", wait_s=30, log=log, env=env,
    )  # fmt: skip
    sale_key, stream = bench.keys.sale(a).sale, bench.keys.sale(a).events
    try:
        before = int(await bench.redis.hget(sale_key, "bookings") or 0)
        progress(f"part 5: wrk, {bench.o.duration} s, {bench.o.connections} connections")
        book = await run_wrk(bench, wrk, "bookings", port, path, tokens, service.pid)
        progress("part 5: waiting for the service's writer to empty the events stream")
        t0 = time.perf_counter()
        while (left := await bench.redis.xlen(stream)) > 0:
            if time.perf_counter() - t0 > 120:
                break
            await asyncio.sleep(0.05)
        drain_s = time.perf_counter() - t0
    finally:
        bench.procs.stop(service)
    after = int(await bench.redis.hget(sale_key, "bookings") or 0)
    rows = await bench.booking_rows(a)

    hello_port = free_port()
    hello = await start_server(
        bench.procs, [sys.executable, str(BENCH_DIR / "hello.py"), str(hello_port)],
        health_url=f"http://127.0.0.1:{hello_port}/", wait_s=15, log=bench.outdir / "hello.log",
    )  # fmt: skip
    try:
        progress("part 5: the same requests to a bare aiohttp app")
        hi = await run_wrk(bench, wrk, "hello", hello_port, path, tokens, hello.pid)
    finally:
        bench.procs.stop(hello)
    tokens.unlink()

    created = int(book["status"].get("201", 0))
    total = sum(int(v) for v in book["status"].values())
    secs = float(book["duration_s"])
    pool = env.get("FLASHSALE_REDIS_MAX_CONNECTIONS") or Settings().redis_max_connections
    out(
        f"  {n(bench.o.tokens)} distinct shoppers (pre-minted HS256 tokens), "
        f"{bench.o.connections} connections, {bench.o.duration} s; the service's order writer "
        f"and sweeper run as usual; its redis-py pool: {pool} connections"
    )
    wrk_lines(book)
    out(
        f"  bookings/s           {created / secs:,.1f} ({n(created)} answered 201 in "
        f"{secs:.2f} s; {100 * created / max(total, 1):.1f}% of the answers)"
    )
    out(
        f"  after the run        Redis counter {n(before)} -> {n(after)}; "
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
    wrk_lines(hi)
    ratio = float(book["rps"]) / float(hi["rps"])
    out(f"  bookings/hello       {ratio:.3f} ({book['rps']} / {hi['rps']} requests/s)")
    out()
