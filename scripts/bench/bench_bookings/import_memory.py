"""Parts 1 to 3: importing N bookings with Redis alone (twice), the Redis memory they take,
and importing them with PostgreSQL (import_bookings)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from flashsale import errors
from flashsale.booking.importer import DEFAULT_BATCH, ImportReport, import_bookings
from flashsale.engine.keys import BOOKING_BUCKETS

from .context import HOUR_MS, STOCK_QUEUED, Bench, batches, now_ms, sale_definition, users
from .measure import CpuMeter, evalsha_stats, reset_stats, used_memory
from .report import BenchError, n, out, pct, progress


@dataclass
class RedisImport:
    """One import with Redis alone: (bookings done, used_memory, rss) at the start, half way
    and the end."""

    cpu: CpuMeter
    calls: int
    usec: float
    memory: list[tuple[int, int, int]]


@dataclass
class RedisAlone:
    """What later parts need of parts 1 and 2."""

    wall_s: float  # run 1 (part 3 compares)
    c_starts_ms: int  # the start of sale C, a queue of N bookings (part 6)


async def import_redis_only(bench: Bench, sale_id: str, count: int) -> RedisImport:
    """book_many in batches, one call at a time, as the importer does."""
    memory = [(0, *await used_memory(bench.redis))]
    await reset_stats(bench.redis)
    done, half, new = 0, count // 2, 0
    with bench.meter() as cpu:
        for batch in batches(users(1, count), DEFAULT_BATCH):
            result = await bench.bookings.book_many(sale_id, batch)
            new += result.new
            done += len(batch)
            if done - len(batch) < half <= done and done < count:
                memory.append((done, *await used_memory(bench.redis)))
    calls, usec = await evalsha_stats(bench.redis)
    memory.append((done, *await used_memory(bench.redis)))
    if new != count:
        raise BenchError(f"sale {sale_id}: {new} new bookings, expected {count}")
    return RedisImport(cpu, calls, usec, memory)


async def redis_alone(bench: Bench) -> RedisAlone:
    """Parts 1 and 2: sale B, then sale C (a second sample, and the big queue of part 6)."""
    count = bench.o.bookings
    b = bench.sale_id("b")
    await bench.create_sale(sale_definition(b, starts_ms=now_ms() + HOUR_MS, stock=1, booking=True))
    progress(f"part 1: book_many of {n(count)} bookings into sale {b} (Redis alone)")
    run1 = await import_redis_only(bench, b, count)
    progress(f"part 2: {run1.cpu.wall:.1f} s; looking at the buckets")
    buckets = await bucket_stats(bench, b)

    # sale C: the same import, into a queue that starts soon after it (part 6)
    c = bench.sale_id("c")
    lead_s = 1.5 * run1.cpu.wall + 15
    c_starts_ms = now_ms() + int(1500 * run1.cpu.wall) + 15_000
    await bench.create_sale(
        sale_definition(c, starts_ms=c_starts_ms, stock=STOCK_QUEUED, booking=True)
    )
    progress(f"part 1: the same into sale {c}, which starts at +{lead_s:.0f} s")
    try:
        run2 = await import_redis_only(bench, c, count)
    except errors.BookingClosed as exc:
        raise BenchError(f"sale {c} started before its import ended: {exc}") from None

    out(
        f"== 1. Import, Redis alone: Bookings.book_many in batches of {n(DEFAULT_BATCH)}, "
        "one call at a time (as the importer)"
    )
    out(f"  {n(count)} bookings into sale {b} (booking_order, starts in an hour)")
    for label, run in (("run 1", run1), ("run 2", run2)):
        out(
            f"  {label}              {run.cpu.wall:.2f} s = {n(count / run.cpu.wall)} "
            f"bookings/s; inside Redis {run.usec / 1e6:.2f} s "
            f"({1000 * run.usec / count:.0f} ns a booking)"
        )
    out(f"  run 2 is sale {c}, armed to start {lead_s:.0f} s later, the big queue of part 6")
    out(f"  {run1.cpu.line()} (run 1)")
    out(f"  book_many calls      {n(run1.calls)}")
    out()
    memory_lines(count, b, run1.memory)
    for line in buckets:
        out(line)
    out()
    return RedisAlone(wall_s=run1.cpu.wall, c_starts_ms=c_starts_ms)


def memory_lines(count: int, sale_id: str, memory: list[tuple[int, int, int]]) -> None:
    (_, m0, r0), (half_done, m_half, _), (_, m1, r1) = memory[0], memory[-2], memory[-1]
    out(f"== 2. Redis memory of {n(count)} bookings (sale {sale_id}, INFO memory used_memory)")
    out(
        f"  used_memory          {m0 / 2**20:.1f} MiB -> {m1 / 2**20:.1f} MiB: "
        f"+{(m1 - m0) / 2**20:.1f} MiB = {(m1 - m0) / count:.1f} bytes per booking "
        "(target: under 100)"
    )
    if len(memory) == 3 and half_done < count:
        marginal = (m1 - m_half) / (count - half_done)
        out(
            f"  second half only     {marginal:.1f} bytes per booking "
            f"(from {n(half_done)} to {n(count)}: without the fixed cost of the bucket keys)"
        )
    out(f"  used_memory_rss      +{(r1 - r0) / 2**20:.1f} MiB")


async def bucket_stats(bench: Bench, sale_id: str) -> list[str]:
    """The report's lines on the sale's bucket keys: encodings, lengths, MEMORY USAGE."""
    redis = bench.redis
    pattern = bench.keys.sale(sale_id).booking_bucket(0)[:-1] + "*"
    names = [key async for key in redis.scan_iter(match=pattern, count=10_000)]
    encodings: Counter[str] = Counter()
    lengths: list[int] = []
    sizes: list[int] = []
    for chunk in batches(names, 10_000):
        async with redis.pipeline(transaction=False) as pipe:
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
    limits = await redis.config_get("hash-max-listpack-*")
    limit = ", ".join(f"{k} {v}" for k, v in sorted(limits.items()))
    lengths.sort()
    sample = names[len(names) // 2]
    sample_enc, sample_len, sample_size = (
        await redis.object("encoding", sample),
        await redis.hlen(sample),
        int(await redis.memory_usage(sample, samples=0) or 0),
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


async def with_postgres(bench: Bench, redis_alone_s: float) -> None:
    """Part 3: import_bookings (Redis + COPY) of the same users into sale A."""
    count = bench.o.bookings
    a = bench.sale_id("a")
    await bench.create_sale(sale_definition(a, starts_ms=now_ms() + HOUR_MS, stock=1, booking=True))
    progress(f"part 3: import_bookings of {n(count)} users into sale {a} (Redis + PostgreSQL)")
    step = max(1, count // 10 // DEFAULT_BATCH) * DEFAULT_BATCH
    started = time.perf_counter()

    def on_batch(report: ImportReport) -> None:
        if report.total % step == 0:
            progress(f"  {n(report.total)} after {time.perf_counter() - started:.1f} s")

    await reset_stats(bench.redis)
    with bench.meter(pg=True) as cpu:
        report = await import_bookings(
            bench.bookings, bench.pool, a, users(1, count), on_batch=on_batch
        )
    calls, usec = await evalsha_stats(bench.redis)
    rows = await bench.booking_rows(a)
    if report.new != count or rows != count:
        raise BenchError(f"import: {report.new} new, {rows} rows, expected {count}")
    pg_s = cpu.wall - redis_alone_s
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
        f"  Redis alone          {redis_alone_s:.2f} s (part 1, run 1): PostgreSQL adds "
        f"{pg_s:.2f} s ({100 * pg_s / cpu.wall:.0f}% of the import)"
    )
    out(f"  {cpu.line()}")
    out()
