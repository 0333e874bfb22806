"""``flashsale demo --admission ...``: a launch with a booking queue.

Every shopper books while booking is open; when the sale opens, the admitted ones buy and the
others wait their turn, polling as the service tells them (202 with ``Retry-After``). Some
booked shoppers never show up, so their places pass to the next in line when their admission
window closes; winners pay at once (through the payment service, which notifies the engine; a
late payer after the reservation expired) or cancel, and cancelled or expired units go to the
next in line too.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from flashsale.auth import issue_token
from flashsale.cli.demo_handoff import Handoff
from flashsale.payments.simulator import Settlement
from flashsale.settings import Settings

BOOKINGS_PER_S = 1500  # a conservative booking rate, to give the crowd time to book


@dataclass
class QueueCrowd:
    answers: Counter[str] = field(default_factory=Counter)
    # (queue rank, user); the rank is None in an arrival sale, which has no queue
    winners: list[tuple[int | None, str]] = field(default_factory=list)
    paid: int = 0
    cancelled: int = 0
    waited_s: list[float] = field(default_factory=list)  # first 202 to 201, per winner
    sold_out_at: float | None = None
    settlements: list[Settlement] = field(default_factory=list)  # of the winners who paid


async def run_queue_sale(
    http: aiohttp.ClientSession, settings: Settings, handoff: Handoff, *,
    admission: str, stock: int, shoppers: int, concurrency: int, pay_share: float,
    no_show_share: float, window_s: int, reservation_ttl_s: int, opening_window_ms: int = 0,
) -> tuple[str, QueueCrowd, int, float]:  # fmt: skip
    """Create the sale, book the crowd, run the launch; (sale id, crowd, booked, seconds)."""
    admin = {"Authorization": f"Bearer {settings.admin_token}"}
    sale_id = f"demo-{admission.replace('_', '-')}-{int(time.time() * 1000)}"
    booking_s = max(2.0, shoppers / BOOKINGS_PER_S)
    now = datetime.now(UTC)
    opens = now + timedelta(seconds=booking_s)
    spec = {
        "sale_id": sale_id, "sku": "redmi-note-demo", "name": "Redmi Note (demo launch)",
        "price_cents": 79_900, "stock": stock, "per_user_limit": 1,
        "starts_at": opens.isoformat(), "ends_at": (opens + timedelta(hours=1)).isoformat(),
        "booking_opens_at": now.isoformat(), "booking_closes_at": opens.isoformat(),
        "booking_required": True, "admission": admission, "reservation_ttl_s": reservation_ttl_s,
    }  # fmt: skip
    if admission != "arrival":
        spec["admission_window_s"] = window_s
    elif opening_window_ms:  # the crowd at the opening gets tickets, then a random order
        spec |= {"opening_window_ms": opening_window_ms, "admission_window_s": window_s}
    async with http.post("/v1/admin/sales", json=spec, headers=admin) as resp:
        if resp.status != 201:
            raise RuntimeError(f"could not create the sale: {resp.status} {await resp.text()}")
    print(f"sale {sale_id}: {stock} units, admission {admission}; {shoppers} shoppers book "
          f"for {booking_s:.1f}s, {concurrency} at a time")  # fmt: skip

    tokens = [issue_token(settings.token_secret, f"fan-{i}") for i in range(shoppers)]
    booked = await _book_all(http, sale_id, tokens, concurrency)
    print(f"{booked} bookings taken; the sale opens in "
          f"{max(0.0, (opens - datetime.now(UTC)).total_seconds()):.1f}s")  # fmt: skip
    await asyncio.sleep(max(0.0, (opens - datetime.now(UTC)).total_seconds()))
    handoff.watch(admin, sale_id)

    rng = random.Random(7)
    crowd = QueueCrowd()
    # the no-shows booked, then forgot: their places must pass on to the next in line
    showing = [t for t in tokens if rng.random() >= no_show_share]
    started = time.perf_counter()
    # every shopper is there at once; the HTTP client's connection limit is the concurrency
    await asyncio.gather(*(
        _shop_until_done(http, handoff, sale_id, token, crowd, rng, pay_share, stock, started)
        for token in showing
    ))  # fmt: skip
    return sale_id, crowd, booked, time.perf_counter() - started


async def _book_all(
    http: aiohttp.ClientSession, sale_id: str, tokens: list[str], concurrency: int
) -> int:
    pending = iter(tokens)
    booked = 0

    async def booker() -> None:
        nonlocal booked
        for token in pending:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(f"/v1/sales/{sale_id}/bookings", headers=headers) as resp:
                booked += resp.status == 201

    await asyncio.gather(*(booker() for _ in range(concurrency)))
    return booked


async def _shop_until_done(
    http: aiohttp.ClientSession, handoff: Handoff, sale_id: str, token: str,
    crowd: QueueCrowd, rng: random.Random, pay_share: float, stock: int, started: float,
) -> None:  # fmt: skip
    """One shopper: buy, and while queued wait as told and try again."""
    headers = {"Authorization": f"Bearer {token}"}
    first_queued: float | None = None
    while True:
        async with http.post(f"/v1/sales/{sale_id}/buy", json={}, headers=headers) as resp:
            body: dict[str, Any] = await resp.json()
            retry_after = float(resp.headers.get("Retry-After", "1"))
        if resp.status == 202:
            crowd.answers["queued (202)"] += 1
            first_queued = first_queued or time.perf_counter()
            await asyncio.sleep(min(retry_after, 0.5))  # faster than told: a keen fan
            continue
        if resp.status != 201:
            crowd.answers[body.get("error", str(resp.status))] += 1
            return
        crowd.answers["reserved"] += 1
        async with http.get(f"/v1/sales/{sale_id}/bookings/me", headers=headers) as resp:
            rank = (await resp.json())["booking"]["queue_rank"]
        crowd.winners.append((rank, token))
        if first_queued is not None:
            crowd.waited_s.append(time.perf_counter() - first_queued)
        order = body["order"]
        if rng.random() < pay_share:  # the shop hands the order to the payment service
            settlement = await handoff.payments.settle(order)
            crowd.settlements.append(settlement)
            crowd.paid += settlement.paid
        else:
            async with http.post(f"/v1/orders/{order['order_id']}/cancel", headers=headers) as resp:
                crowd.cancelled += resp.status == 200
        if crowd.paid == stock and crowd.sold_out_at is None:
            crowd.sold_out_at = time.perf_counter() - started
        return
