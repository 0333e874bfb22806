"""``flashsale demo``: a whole sale, end to end, on the configured Redis and PostgreSQL.

Starts the service in this process on a free port, creates a sale, lets a crowd of simulated
shoppers (real HTTP, real tokens) buy it out, has most winners pay and some cancel, waits for
the sale to come to rest (every reservation paid, cancelled or expired) and for every order to
reach PostgreSQL, and prints what happened, with the invariants checked. The winners pay
through a simulated payment service that signs its notifications and misbehaves as real ones
do (late, twice, a wrong amount: demo_handoff.py; without FLASHSALE_PAYMENT_SECRET the demo
makes a secret up), and the order events are delivered by the relay, run here, to a receiver
that counts them. With ``--admission`` the crowd books first and buys through the booking queue
(demo_queue.py).
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from flashsale.auth import issue_token
from flashsale.cli.demo_handoff import Handoff
from flashsale.cli.demo_queue import QueueCrowd, run_queue_sale
from flashsale.http.app import create_app
from flashsale.http.runner import AppRunner
from flashsale.http.services import SERVICES
from flashsale.payments.simulator import PaymentMix, Settlement
from flashsale.settings import Settings
from flashsale.webhooks.signing import new_secret


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def run_demo(
    settings: Settings, *, stock: int, shoppers: int, concurrency: int, pay_share: float,
    admission: str | None = None, no_show_share: float = 0.1, window_s: int = 2,
    reservation_ttl_s: int = 5, mix: PaymentMix | None = None, opening_window_ms: int = 0,
) -> int:  # fmt: skip
    if not settings.payment_secrets:  # the demo plays the payment service too
        settings = replace(settings, payment_secrets=(new_secret(),))
    app = create_app(settings)
    runner = AppRunner(app, access_log=None)  # flashsale's: parser errors answered as JSON
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    handoff = await Handoff.start(settings, base, app[SERVICES].pool, mix or PaymentMix())
    try:
        async with aiohttp.ClientSession(
            base, connector=aiohttp.TCPConnector(limit=concurrency)
        ) as http:
            if admission is None:
                return await _sale(
                    http, handoff, settings, stock, shoppers, concurrency, pay_share,
                    reservation_ttl_s, opening_window_ms=opening_window_ms, window_s=window_s,
                )  # fmt: skip
            sale_id, crowd, booked, crowd_s = await run_queue_sale(
                http, settings, handoff, admission=admission, stock=stock, shoppers=shoppers,
                concurrency=concurrency, pay_share=pay_share, no_show_share=no_show_share,
                window_s=window_s, reservation_ttl_s=reservation_ttl_s,
                opening_window_ms=opening_window_ms,
            )  # fmt: skip
            await handoff.come_to_rest(http, _admin(settings), sale_id, reservation_ttl_s + 30)
            return await _queue_report(
                http, handoff, settings, sale_id, crowd, booked, crowd_s, stock
            )
    finally:
        await handoff.close()
        await runner.cleanup()


def _admin(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.admin_token}"}


async def _sale(
    http: aiohttp.ClientSession,
    handoff: Handoff,
    settings: Settings,
    stock: int,
    shoppers: int,
    concurrency: int,
    pay_share: float,
    reservation_ttl_s: int,
    *,
    opening_window_ms: int = 0,
    window_s: int = 2,
) -> int:
    admin = _admin(settings)
    sale_id = f"demo-{int(time.time() * 1000)}"
    now = datetime.now(UTC)
    spec = {
        "sale_id": sale_id,
        "sku": "redmi-note-demo",
        "name": "Redmi Note (demo launch)",
        "price_cents": 79_900,
        "stock": stock,
        "per_user_limit": 1,
        "starts_at": now.isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat(),
        "reservation_ttl_s": reservation_ttl_s,
    }
    if opening_window_ms:  # arrivals around the start get a ticket, then a random order
        spec |= {"opening_window_ms": opening_window_ms, "admission_window_s": window_s}
    async with http.post("/v1/admin/sales", json=spec, headers=admin) as resp:
        if resp.status != 201:
            print(f"could not create the sale: {resp.status} {await resp.text()}")
            return 1
    print(f"sale {sale_id}: {stock} units, {shoppers} shoppers, {concurrency} at a time; "
          f"reservations last {reservation_ttl_s} s")  # fmt: skip
    handoff.watch(admin, sale_id)

    tokens = [issue_token(settings.token_secret, f"shopper-{i}") for i in range(shoppers)]
    answers: Counter[str] = Counter()
    winners: list[tuple[str, dict[str, Any]]] = []  # (token, order)
    sold_out_at: float | None = None
    queue: asyncio.Queue[str] = asyncio.Queue()
    for token in tokens:
        queue.put_nowait(token)
    # Most winners pay at once: the shop hands each order (its amount and currency) to the
    # payment service, which notifies the engine (a late payer's notification comes after the
    # reservation expired). The others change their mind and cancel, which puts units back.
    rng = random.Random(7)
    checkouts: list[asyncio.Task[Settlement | None]] = []
    cancelled = 0

    async def checkout(token: str, order: dict[str, Any], pays: bool) -> Settlement | None:
        nonlocal cancelled
        if pays:
            return await handoff.payments.settle(order)
        headers = {"Authorization": f"Bearer {token}"}
        cancel = f"/v1/orders/{order['order_id']}/cancel"
        async with handoff.checkout.post(cancel, headers=headers) as resp:
            cancelled += resp.status == 200
        return None

    waiting = 0  # shoppers told to come back later (202: a ticket of the opening window)

    def come_back(token: str) -> None:
        nonlocal waiting
        waiting -= 1
        queue.put_nowait(token)

    async def shopper() -> None:
        nonlocal sold_out_at, waiting
        while not queue.empty() or waiting:
            if queue.empty():
                await asyncio.sleep(0.05)
                continue
            token = queue.get_nowait()
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(f"/v1/sales/{sale_id}/buy", json={}, headers=headers) as resp:
                body: dict[str, Any] = await resp.json()
            if resp.status == 202:  # queued: asks again as told, or within a second (keen)
                answers["queued (202)"] += 1
                waiting += 1
                retry_after_s = min(float(resp.headers.get("Retry-After", "1")), 1.0)
                asyncio.get_running_loop().call_later(retry_after_s, come_back, token)
            elif resp.status == 201:
                answers["reserved"] += 1
                winners.append((token, body["order"]))
                pays = rng.random() < pay_share
                checkouts.append(asyncio.create_task(checkout(token, body["order"], pays)))
                if len(winners) == stock:
                    sold_out_at = time.perf_counter()
            else:
                answers[body.get("error", str(resp.status))] += 1

    started = time.perf_counter()
    await asyncio.gather(*(shopper() for _ in range(concurrency)))
    crowd_s = time.perf_counter() - started
    sellout_s = (sold_out_at or time.perf_counter()) - started
    settlements = [s for s in await asyncio.gather(*checkouts) if s is not None]
    paid = sum(s.paid for s in settlements)
    await handoff.come_to_rest(http, admin, sale_id, reservation_ttl_s + 30)

    stats = await _wait_for_postgres(http, admin, sale_id, len(winners))
    pg = stats["orders_in_postgres"]
    print(f"crowd done in {crowd_s:.2f}s; sold out after {sellout_s:.2f}s "
          f"({min(len(winners), stock) / sellout_s:.0f} buys/s)")  # fmt: skip
    print("answers: " + ", ".join(f"{k} {v}" for k, v in answers.most_common()))
    print(f"winners: {paid} paid, {cancelled} cancelled (their units went back on sale), "
          f"{len(winners) - paid - cancelled} never paid in time")  # fmt: skip
    _print_units(stats)
    print(f"orders in PostgreSQL: {pg['total']} ({pg['paid']} paid, {pg['cancelled']} cancelled, "
          f"{pg['expired']} expired, {pg['reserved']} reserved)")  # fmt: skip

    problems = []
    came_back = stats["expired"] + stats["cancelled"]
    if answers["reserved"] + stats["paid_late"] > stock + came_back:
        problems.append(f"oversold: {answers['reserved']} reservations and "
                        f"{stats['paid_late']} late payments for {stock} units "
                        f"(+{came_back} that came back)")  # fmt: skip
    if stats["available"] + stats["reserved"] + stats["paid"] != stock:
        problems.append("available + reserved + paid != stock")
    if pg["total"] != len(winners) or pg["paid"] != paid or pg["cancelled"] != cancelled:
        problems.append("PostgreSQL does not hold exactly the orders that were answered 201")
    problems += await handoff.report(sale_id, stock, settlements)
    return _verdict(problems)


async def _queue_report(
    http: aiohttp.ClientSession, handoff: Handoff, settings: Settings, sale_id: str,
    crowd: QueueCrowd, booked: int, crowd_s: float, stock: int,
) -> int:  # fmt: skip
    admin = _admin(settings)
    stats = await _wait_for_postgres(http, admin, sale_id, len(crowd.winners))
    pg = stats["orders_in_postgres"]
    sold = f"all paid after {crowd.sold_out_at:.2f}s" if crowd.sold_out_at else "not sold out"
    print(f"crowd done in {crowd_s:.2f}s; {sold}")
    print("answers: " + ", ".join(f"{k} {v}" for k, v in crowd.answers.most_common()))
    if crowd.waited_s:
        waits = sorted(crowd.waited_s)
        print(f"{len(waits)} winners waited in the queue first: median "
              f"{waits[len(waits) // 2]:.1f}s, longest {waits[-1]:.1f}s")  # fmt: skip
    ranks = sorted(rank for rank, _ in crowd.winners if rank is not None)
    if ranks:
        admitted = f"{stats.get('admitted')} of {stats['bookings']} booked"
        print(f"winners' queue ranks: {ranks[0]} to {ranks[-1]} (admitted: {admitted})")
    print(f"winners: {crowd.paid} paid, {crowd.cancelled} cancelled (their units passed on)")
    _print_units(stats)
    print(f"orders in PostgreSQL: {pg['total']} ({pg['paid']} paid, {pg['cancelled']} "
          f"cancelled); bookings in PostgreSQL: {stats['bookings_in_postgres']}")  # fmt: skip
    problems = []
    if stats["paid"] > stock or stats["available"] + stats["reserved"] + stats["paid"] != stock:
        problems.append("units do not add up to the stock")
    users = [user for _, user in crowd.winners]
    if len(users) != len(set(users)):
        problems.append("a shopper won twice")
    if pg["total"] != len(crowd.winners) or pg["paid"] != crowd.paid:
        problems.append("PostgreSQL does not hold exactly the orders that were answered 201")
    if stats["bookings"] != booked:
        problems.append("bookings answered 201 and bookings counted differ")
    problems += await handoff.report(sale_id, stock, crowd.settlements)
    return _verdict(problems)


def _print_units(stats: dict[str, Any]) -> None:
    units = ", ".join(
        f"{k} {stats[k]}" for k in ("available", "reserved", "paid", "cancelled", "expired")
    )
    print(f"stock {stats['stock']}: {units}")


def _verdict(problems: list[str]) -> int:
    for problem in problems:
        print(f"VIOLATION: {problem}")
    print("verdict: " + ("all invariants hold" if not problems else "FAILED"))
    return 0 if not problems else 1


async def _wait_for_postgres(
    http: aiohttp.ClientSession, admin: dict[str, str], sale_id: str, orders: int
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        async with http.get(f"/v1/admin/sales/{sale_id}/stats", headers=admin) as resp:
            stats: dict[str, Any] = (await resp.json())["stats"]
        pg = stats["orders_in_postgres"]
        settled = (
            pg["total"] == orders
            and pg["paid"] == stats["paid"]
            and pg["cancelled"] == stats["cancelled"]
            and pg["reserved"] == stats["reserved"]
        )
        if settled or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.2)
