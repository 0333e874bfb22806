"""The opening-window benchmark behind scripts/bench-opening (see there for the options).

Runs against a private ``redis-server`` (free port, no persistence, default configuration)
started here and stopped at the end, at engine level (Engine.buy, buy.lua through the
coalescer, many tasks on one uvloop event loop): no HTTP, no PostgreSQL.

1. Intake: N distinct shoppers ask to buy within the opening window (pre-queue open, the
   window open for an hour): every one gets a ticket (Engine.buy -> Ticketed). Rate, time
   inside Redis a call, and the Redis memory the tickets take (INFO memory before and after).
2. The draw: the sale's start is moved so that the window closes now (the only change made
   behind the engine's back; a real sale's clock does this), then one admit.lua and one buy:
   their time, to show that nothing is shuffled in Redis at the close.
3. The published digest (roll.published: the ticket roll read, the window's order computed,
   SHA-256) and the full export (every ticket's row) and its verification, as the operator and
   an auditor would run them.
4. Everyone asks once: N Engine.buy calls after the draw. The first STOCK ranks reserve their
   unit; the others get their place. The ranks the answers imply are checked to be exactly
   1..N (a permutation), and the first sample against the reference draw.
5. The queue moves through all N: nobody buys any more, each admission window lasts one
   second, the sweeper step (expire + admit) runs until every ticket has been admitted; the
   time and the slowest admit.lua call.

With ``--compare-buy-lua FILE`` it first measures what a sale without a window pays: plain
reservations by buy.lua as shipped against FILE (another version of it, e.g. the one before the
opening window: ``<(git show REV:flashsale/engine/lua/buy.lua)``), rounds interleaved, the time
inside Redis a call (INFO commandstats).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TypeVar

import uvloop
from bench_bookings.measure import evalsha_stats, reset_stats, used_memory
from bench_bookings.report import BenchError
from bench_bookings.servers import Processes, start_redis
from redis.asyncio import Redis

import flashsale
from flashsale import errors
from flashsale.engine.connection import connect_redis
from flashsale.engine.engine import BuyOutcome, Engine
from flashsale.engine.keys import Keyspace
from flashsale.engine.wire import Wire
from flashsale.models import OpeningPolicy, SaleDefinition
from flashsale.opening import export, roll, shuffle, verify
from flashsale.opening.tickets import Ticketed
from flashsale.settings import Settings

T = TypeVar("T")
PREFIX = "bench-op"
SEED = "bench-opening-seed"
LINES: list[str] = []


def out(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def progress(message: str) -> None:
    print(f"bench-opening: {message}", file=sys.stderr, flush=True)


def n(x: float) -> str:
    return f"{x:,.0f}"


def mib(b: float) -> str:
    return f"{b / 1048576:,.1f} MiB"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench-opening")
    p.add_argument("--tickets", type=int, default=1_000_000, help="tickets (default 1,000,000)")
    p.add_argument("--stock", type=int, default=100_000, help="units (default 100,000)")
    p.add_argument("--concurrency", type=int, default=200, help="tasks calling Engine.buy")
    p.add_argument("--out", default="out/bench-opening", help="where report.txt goes")
    p.add_argument("--compare-buy-lua", metavar="FILE", help="part 0: buy.lua against FILE")
    args = p.parse_args(argv)
    # read now: a file given as <(git show ...) can be read once, and not from the event loop
    args.other_buy_lua = Path(args.compare_buy_lua).read_text() if args.compare_buy_lua else ""
    return args


def user(i: int) -> str:
    return f"fan-{i:08d}"


async def calls(
    engine: Engine, sale_id: str, users: range, tasks: int
) -> tuple[float, Counter[str], list[object]]:
    """Engine.buy for every user of ``users`` from ``tasks`` tasks: (seconds, answers, results)."""
    todo = iter(users)
    answers: Counter[str] = Counter()
    results: list[object] = [None] * len(users)
    first = users.start

    async def worker() -> None:
        for i in todo:
            try:
                result: object = await engine.buy(sale_id, user(i), 1)
            except errors.FlashsaleError as exc:
                result = exc
            answers[type(result).__name__] += 1
            results[i - first] = result

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return time.perf_counter() - t0, answers, results


async def inside_redis(redis: Redis, call: Awaitable[T]) -> tuple[float, T]:
    """``call``'s result and the microseconds EVALSHA spent inside Redis meanwhile (nothing
    else runs then): INFO commandstats before and after."""
    _, before = await evalsha_stats(redis)
    result = await call
    _, after = await evalsha_stats(redis)
    return after - before, result


def _command_name(command: object, scripts: dict[str, str]) -> str:
    """A SLOWLOG entry's command: its name, or for EVALSHA the script's."""
    text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
    words = text.split(" ", 2)
    if words[0].upper() == "EVALSHA" and len(words) > 1:
        return scripts.get(words[1], "EVALSHA (other)")
    return words[0].upper()


def export_and_verify(
    rows: list[export.TicketRow], digest: str
) -> tuple[float, float, int, verify.Verification]:
    """Write the rows to a CSV file, read it back and verify it: (write s, read and verify s,
    bytes, the verification)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tickets.csv"
        t0 = time.perf_counter()
        with path.open("wb") as f:
            export.write(rows, "csv", f)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with path.open(encoding="utf-8", newline="") as f:
            read_back = export.read(f)
        checked = verify.verify(
            read_back, SEED, digest=digest, seed_sha256=shuffle.commitment(SEED),
            window_tickets=len(rows),
        )  # fmt: skip
        return write_s, time.perf_counter() - t0, path.stat().st_size, checked


async def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-opening-"))
    procs = Processes()
    try:
        redis_proc, port = start_redis(procs, workdir)
        url = f"redis://127.0.0.1:{port}/0"
        # the service's own clients: redis-py for the rest, the lean connection for the calls
        # of the hot path, batched per event-loop tick (engine/coalescer.py)
        redis = connect_redis(Settings(redis_url=url, redis_max_connections=args.concurrency))
        wire = Wire(url, connect_timeout_s=2.0, timeout_s=30.0)
        try:
            await run(args, redis, wire, redis_proc.pid)
        finally:
            await wire.close()
            await redis.aclose()
    finally:
        procs.stop_all()
    report_dir = Path(args.out) / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "report.txt").write_text("\n".join(LINES) + "\n")
    progress(f"report: {report_dir / 'report.txt'}")
    return 0


async def compare_buy_lua(
    redis: Redis, other: str, other_body: str, rounds: int = 10, calls_n: int = 20_000
) -> None:
    """Plain reservations (a sale without a window) by the shipped buy.lua and by ``other``,
    rounds interleaved: the median time inside Redis a call of each."""
    from flashsale.engine.keys import booking_slot

    shipped = Engine(redis, Keyspace(PREFIX), sold_out_recheck_s=0.1, idempotency_ttl_s=60)
    bodies = {"shipped": shipped.scripts.buy.body, "other": other_body}
    figures: dict[str, list[float]] = {name: [] for name in bodies}
    for r in range(rounds):
        order = list(bodies.items())
        for name, body in order if r % 2 else reversed(order):  # ABBA: drift cancels out
            sha = await redis.script_load(body)
            now = int(time.time() * 1000)
            sale = SaleDefinition(
                sale_id=f"plain-{r}-{name}", sku="bench", name="bench", price_cents=100,
                stock=calls_n, per_user_limit=1, starts_ms=now - 1000, ends_ms=now + 3_600_000,
                reservation_ttl_s=900,
            )  # fmt: skip
            await shipped.arm_sale(sale)
            k = shipped.keys.sale(sale.sale_id)
            await reset_stats(redis)
            for start in range(0, calls_n, 1000):
                async with redis.pipeline(transaction=False) as pipe:
                    for i in range(start, start + 1000):
                        who, order_id = user(i), f"{sale.sale_id}.o{i}"
                        bucket, field = booking_slot(who)
                        keys = [
                            k.sale, k.holders, k.deadlines, k.events, k.order(order_id),
                            k.idempotency(who, ""), k.fcodes, k.fcode_failures_of_user(who),
                            k.fcode_failures_of_address(""), k.booking_bucket(bucket), k.waves,
                            k.queue_holders, k.queue_bits, k.requests_of_user(who),
                            k.requests_of_address(""), k.ticket_bucket(bucket), k.ticket_roll,
                        ]  # fmt: skip
                        _ = pipe.evalsha(sha, len(keys), *keys, who, 1, order_id, "", 60, "", 5,
                                         0, 60, field)  # fmt: skip
                    answers = await pipe.execute()
                assert all(a[0] == "ok" for a in answers), answers[:2]
            ncalls, usec = await evalsha_stats(redis)
            figures[name].append(usec / ncalls)
    medians = {name: sorted(v)[len(v) // 2] for name, v in figures.items()}
    out()
    out(f"0. A sale without a window: a plain reservation, {rounds} interleaved rounds of "
        f"{n(calls_n)} (pipelined, one at a time inside Redis), median time inside Redis a call: "
        f"buy.lua as shipped {medians['shipped']:.1f} us, {other} {medians['other']:.1f} us "
        f"(rounds: shipped {', '.join(f'{x:.1f}' for x in figures['shipped'])}; other "
        f"{', '.join(f'{x:.1f}' for x in figures['other'])})")  # fmt: skip


async def run(args: argparse.Namespace, redis: Redis, wire: Wire, redis_pid: int) -> None:
    tickets, stock = args.tickets, args.stock
    server = await redis.info("server")
    out(f"== bench-opening, {datetime.now(UTC).isoformat(timespec='seconds')}")
    extra = f" --compare-buy-lua {args.compare_buy_lua}" if args.compare_buy_lua else ""
    out(f"  command: scripts/bench-opening --tickets {tickets} --stock {stock} "
        f"--concurrency {args.concurrency}{extra}")  # fmt: skip
    out(f"  flashsale {flashsale.__version__}, Python {platform.python_version()}, "
        f"redis-py {metadata.version('redis')}, hiredis {metadata.version('hiredis')}, "
        f"uvloop {metadata.version('uvloop')}; redis-server {server['redis_version']} "
        f"(private, no persistence, pid {redis_pid}); {os.cpu_count()} CPUs, "
        f"{platform.machine()} {platform.release()}; load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip
    if args.compare_buy_lua:
        progress("part 0: buy.lua against " + args.compare_buy_lua)
        await compare_buy_lua(redis, args.compare_buy_lua, args.other_buy_lua)
    engine = Engine(
        redis, Keyspace(PREFIX), sold_out_recheck_s=0.1, idempotency_ttl_s=60, wire=wire
    )
    now = int(time.time() * 1000)
    window_ms = 3_600_000
    sale = SaleDefinition(
        sale_id="opening", sku="bench", name="bench", price_cents=100, stock=stock,
        per_user_limit=1, starts_ms=now, ends_ms=now + 4 * window_ms, reservation_ttl_s=1,
        opening=OpeningPolicy(window_ms=window_ms, seed=SEED, admission_window_s=3600),
    )  # fmt: skip
    await engine.arm_sale(sale)
    keys = engine.keys.sale(sale.sale_id)
    for script in (engine.scripts.buy, engine.scripts.admit, engine.scripts.expire):
        await redis.script_load(script.body)  # not timed: a fresh Redis's first calls
    # every command that holds Redis a millisecond or more is logged: the report counts them
    await redis.config_set("slowlog-log-slower-than", 1000)
    await redis.config_set("slowlog-max-len", 10_000)
    await redis.slowlog_reset()

    # 1. intake
    progress(f"part 1: {n(tickets)} shoppers take a ticket")
    before, _ = await used_memory(redis)
    await reset_stats(redis)
    seconds, answers, _ = await calls(engine, sale.sale_id, range(1, tickets + 1),
                                      args.concurrency)  # fmt: skip
    ncalls, usec = await evalsha_stats(redis)
    after, rss = await used_memory(redis)
    assert answers == Counter({"Ticketed": tickets}), answers
    assert int(await redis.hget(keys.sale, "op_tickets") or 0) == tickets
    out()
    out(
        f"1. Intake: {n(tickets)} tickets in {seconds:.1f} s = {n(tickets / seconds)} tickets/s "
        f"({args.concurrency} tasks, one process); {usec / ncalls:.1f} us inside Redis a call"
    )
    out(f"   Redis memory: {mib(before)} -> {mib(after)} (+{mib(after - before)} = "
        f"{(after - before) / tickets:.1f} bytes a ticket: bucket field + the roll's 10 bytes); "
        f"RSS {mib(rss)}")  # fmt: skip

    # 2. the draw
    progress("part 2: the window closes")
    closed_ms = int(time.time() * 1000)
    await redis.hset(keys.sale, "starts_ms", closed_ms - window_ms)
    await redis.delete(keys.waves)  # the opening wave: admitted when the window closes
    await redis.zadd(keys.waves, {f"1:{closed_ms}": 1})
    admit_us, (_, _, frontier, _) = await inside_redis(
        redis, engine.scripts.admit(redis, [keys.sale, keys.waves, keys.queue_bits,
                                            keys.deadlines], [])
    )  # fmt: skip
    buy_us, first = await inside_redis(redis, engine.buy(sale.sale_id, user(1), 1))
    assert int(await redis.hget(keys.sale, "op_n") or 0) == tickets
    out(f"2. The draw: the first admit.lua after the close (it counts the window's tickets for "
        f"good) {admit_us:.0f} us inside Redis, frontier {n(int(frontier))}; the first buy "
        f"after it {buy_us:.0f} us ({type(first).__name__}): nothing is shuffled in "
        "Redis")  # fmt: skip

    # 3. published digest, export, verification
    progress("part 3: the published digest, the export and its verification")
    t0 = time.perf_counter()
    published = await roll.published(redis, keys)
    digest_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, ordered = await roll.ticket_rows(redis, keys)
    rows = list(export.rows_of(ordered, tickets))
    export_s = time.perf_counter() - t0
    write_s, verify_s, size, checked = export_and_verify(rows, published["ordered_list_sha256"])
    export_s += write_s
    assert checked.ok, checked.problems
    out(f"3. Published digest (read the roll, draw {n(tickets)} ranks, SHA-256): "
        f"{digest_s:.2f} s; export of every row to CSV ({mib(size)}): {export_s:.2f} s; "
        f"reading it back and verifying it against the seed and the digest: {verify_s:.2f} s "
        f"({'verified' if checked.ok else 'NOT verified'})")  # fmt: skip

    # 4. everyone asks once
    progress(f"part 4: {n(tickets)} ticket holders ask once")
    await reset_stats(redis)
    seconds, answers, results = await calls(engine, sale.sale_id, range(2, tickets + 1),
                                            args.concurrency)  # fmt: skip
    ncalls, usec = await evalsha_stats(redis)
    results.insert(0, first)
    frontier_now = min(stock, tickets)
    ranks = []
    bought = 0
    for result in results:
        if isinstance(result, Ticketed):
            assert result.ahead is not None
            ranks.append(result.ahead + frontier_now + 1)
        else:
            assert isinstance(result, BuyOutcome), result
            bought += 1
    permutation = sorted(ranks) == list(range(frontier_now + 1, tickets + 1)) and bought == (
        frontier_now
    )
    sample_ok = all(
        r.ahead is None or r.ahead + frontier_now + 1 == shuffle.rank(SEED, tickets, r.ticket)
        for r in results[:2000]
        if isinstance(r, Ticketed)
    )
    out(f"4. Everyone asks once after the draw: {n(tickets)} calls in {seconds:.1f}"
        f" s = {n(tickets / seconds)} calls/s, {usec / ncalls:.1f} us inside Redis a call "
        f"(draw_rank for each); {n(bought)} reserved (ranks 1..{n(frontier_now)}), "
        f"{n(len(ranks))} told their place; the places are a permutation of the ranks: "
        f"{'yes' if permutation else 'NO'}; 2,000 checked against the reference draw: "
        f"{'yes' if sample_ok else 'NO'}")  # fmt: skip

    # 5. the queue moves through all N
    progress("part 5: the queue moves through every ticket")
    from flashsale.engine.sweeper import Sweeper

    await redis.hset(keys.sale, "adm_window_s", 1)  # from now on: one second to buy
    sweeper = Sweeper(engine, interval_s=0.05)  # expiry batches of 500, as serve runs it
    t0 = time.perf_counter()
    slowest_us, passes = 0.0, 0
    while True:
        await sweeper.sweep_once()
        admit_us, (_, _, frontier, _) = await inside_redis(
            redis, engine.scripts.admit(redis, [keys.sale, keys.waves, keys.queue_bits,
                                                keys.deadlines], [])
        )  # fmt: skip
        slowest_us = max(slowest_us, admit_us)
        passes += 1
        if int(frontier) >= tickets:
            break
        if time.perf_counter() - t0 > 600:
            raise BenchError("the queue did not move through every ticket in 10 minutes")
        await asyncio.sleep(0.05)
    waves = await redis.zcard(keys.waves)
    out(f"5. The queue moves through all {n(tickets)} tickets (nobody buys any more, a window of "
        f"1 s each, reservations expire after 1 s): {time.perf_counter() - t0:.1f} s, "
        f"{n(waves)} admission waves, {passes} sweeper passes; the slowest admit.lua "
        f"{slowest_us:.0f} us inside Redis")  # fmt: skip
    final, _ = await used_memory(redis)
    out(f"   Redis memory at the end: {mib(final)}")
    slow = await redis.slowlog_get(10_000)
    scripts = {
        s.sha: f"{s.name}.lua"
        for s in (engine.scripts.buy, engine.scripts.admit, engine.scripts.expire)
    }
    kinds: Counter[str] = Counter()
    longest: dict[str, int] = {}
    for entry in slow:
        name = _command_name(entry["command"], scripts)
        kinds[name] += 1
        longest[name] = max(longest.get(name, 0), int(entry["duration"]))
    out(f"Commands that held Redis 1 ms or more, parts 1 to 5 (SLOWLOG, wall time inside "
        f"Redis: a busy machine's scheduling counts too): {len(slow)}")  # fmt: skip
    for name, count in kinds.most_common():
        out(f"   {name}: {count}, the longest {longest[name] / 1000:.1f} ms")
    out(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    uvloop.install()
    try:
        sys.exit(asyncio.run(main(parse_args(sys.argv[1:]))))
    except BenchError as exc:
        print(f"bench-opening: {exc}", file=sys.stderr)
        sys.exit(1)
