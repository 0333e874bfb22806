"""Part 6: what the queue check costs a buy. Engine.buy by booked shoppers who are not admitted
yet (a queued answer) in a started queue of 10,000 bookings (sale D) and of N (sale C, booked
in part 1), against a plain reservation in a sale without booking (sale E)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator

from flashsale.booking.importer import DEFAULT_BATCH
from flashsale.engine.engine import BuyOutcome, Queued

from .context import STOCK_QUEUED, Bench, batches, now_ms, sale_definition, users
from .measure import evalsha_stats, reset_stats, timed_calls
from .report import n, out, pct, progress

ROUNDS = 3


async def admission_cost(bench: Bench, c_starts_ms: int) -> None:
    calls, small, big = bench.o.buy_calls, bench.o.small, bench.o.bookings
    d, e, c = bench.sale_id("d"), bench.sale_id("e"), bench.sale_id("c")
    now = now_ms()
    d_starts = now + 3000
    await bench.create_sale(
        sale_definition(d, starts_ms=d_starts, stock=STOCK_QUEUED, booking=True)
    )
    progress(f"part 6: {n(small)} bookings into sale {d}, which starts in 3 s")
    for batch in batches(users(1, small, "small"), DEFAULT_BATCH):
        await bench.bookings.book_many(d, batch)
    await bench.create_sale(
        sale_definition(e, starts_ms=now - 60_000, stock=ROUNDS * calls, booking=False)
    )
    wait_s = (max(d_starts, c_starts_ms) + 200) / 1000 - time.time()
    if wait_s > 0:
        progress(f"part 6: waiting {wait_s:.1f} s for the queues to start")
        await asyncio.sleep(wait_s)

    # booked, not admitted: booking numbers above the STOCK_QUEUED admitted at the start
    small_queued = list(users(STOCK_QUEUED + 1, small, "small"))
    big_queued = list(users(big - calls + 1, big))
    cases: list[tuple[str, str, Callable[[int], Iterator[str]], type]] = [
        (f"queued, {n(small)} bookings (sale {d})", d,
         lambda _: itertools.islice(itertools.cycle(small_queued), calls), Queued),
        (f"queued, {n(big)} bookings (sale {c})", c, lambda _: iter(big_queued), Queued),
        (f"no booking: reserved (sale {e})", e,
         lambda r: users(1, calls, f"plain{r}"), BuyOutcome),
    ]  # fmt: skip
    out(
        f"== 6. Admission decision: Engine.buy (buy.lua), {n(calls)} calls each, "
        f"{bench.o.buy_concurrency} tasks, engine level"
    )
    out(
        f"  queued: booked shoppers with numbers above the {STOCK_QUEUED} admitted at the "
        "start, in a started booking_order queue: the answer is their place, nothing is "
        "written"
    )
    out("  no booking: a plain sale; every call reserves a unit (order hash, deadline, event)")
    figures: dict[str, list[tuple[float, float]]] = {}
    width = max(len(label) for label, *_ in cases)
    for r in range(1, ROUNDS + 1):
        for label, sale_id, who, expect in cases:
            progress(f"part 6, round {r}: {label}")
            line, rate, usec = await buy_run(bench, sale_id, who(r), expect)
            figures.setdefault(label, []).append((rate, usec))
            out(f"  round {r}, {label:<{width}} {line}")
    out(f"  median of the {ROUNDS} rounds:")
    for label, runs in figures.items():
        rates, usecs = sorted(r for r, _ in runs), sorted(u for _, u in runs)
        out(
            f"    {label:<{width + 5}} {n(rates[len(rates) // 2])} calls/s, inside Redis "
            f"{usecs[len(usecs) // 2]:.1f} us a call"
        )
    out()


async def buy_run(
    bench: Bench, sale_id: str, who: Iterator[str], expect: type
) -> tuple[str, float, float]:
    """One case of one round: (a report line, calls/s, microseconds inside Redis a call)."""
    ahead: list[int] = []

    async def buy(user: str) -> str:
        result = await bench.engine.buy(sale_id, user, 1)
        if isinstance(result, Queued):
            ahead.append(result.ahead)
        return type(result).__name__

    await reset_stats(bench.redis)
    with bench.meter() as cpu:
        latencies, answers = await timed_calls(buy, who, bench.o.buy_concurrency)
    ncalls, usec = await evalsha_stats(bench.redis)
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
