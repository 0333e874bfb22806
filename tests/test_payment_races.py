"""Payments racing the expiry sweeper and a crowd buying the units that come back, seeded:
whatever the timing, nothing is oversold, every payment is decided exactly once (every
delivery of it gets the same answer), an order is paid by at most one payment, the units add
up and Redis and PostgreSQL agree. FLASHSALE_PAYMENT_RACE_RUNS (default 6) runs more seeds."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import defaultdict
from typing import Any

import pytest

from flashsale.payments.simulator import new_id
from tests.conftest import ServiceFactory
from tests.helpers import Service, assert_reconciled

RUNS = int(os.environ.get("FLASHSALE_PAYMENT_RACE_RUNS", "6"))
TTL_S = 1
STOCK = 6


@pytest.mark.parametrize("seed", range(RUNS))
async def test_payments_racing_expiry_decide_each_payment_once_and_never_oversell(
    make_service: ServiceFactory, seed: int
) -> None:
    rng = random.Random(seed)
    service = await make_service(sweeper_interval_s=0.02)
    sale = await service.create_sale(
        stock=STOCK, per_user_limit=2, reservation_ttl_s=TTL_S, price_cents=rng.randint(1, 9999)
    )
    sid = sale["sale_id"]
    price = sale["price_cents"]
    answers: dict[str, list[dict[str, Any]]] = defaultdict(list)  # payment id -> its answers
    owner: dict[str, str] = {}  # order id -> shopper
    tasks: list[asyncio.Task[None]] = []

    async def deliver(order_id: str, amount: int, payment_id: str, webhook_id: str) -> None:
        reply = await service.pay(order_id, amount, "USD", payment_id, webhook_id=webhook_id)
        assert reply.status == 200, (seed, reply.body)
        answers[payment_id].append(reply.body["payment"])

    async def checkout(order_id: str, quantity: int) -> None:
        """A payment some time around the deadline, sometimes wrong, often delivered twice
        at once, sometimes again under a new webhook-id, sometimes a second payment."""
        await asyncio.sleep(rng.uniform(0.6, 1.5) * TTL_S)
        amount = price * quantity + (1 if rng.random() < 0.1 else 0)
        payment_id, webhook_id = new_id("pay"), new_id("msg")
        copies = [deliver(order_id, amount, payment_id, webhook_id)]
        if rng.random() < 0.5:
            copies.append(deliver(order_id, amount, payment_id, webhook_id))
        if rng.random() < 0.3:
            copies.append(deliver(order_id, amount, payment_id, new_id("msg")))
        if rng.random() < 0.3:
            copies.append(deliver(order_id, price * quantity, new_id("pay"), new_id("msg")))
        rng.shuffle(copies)
        await asyncio.gather(*copies)

    async def shopper(user: str, rounds: int) -> None:
        """Buys whenever units are there; pays (or not) each order it gets."""
        for _ in range(rounds):
            quantity = rng.choice([1, 1, 2])
            reply = await service.buy(sid, user, {"quantity": quantity})
            if reply.status == 201:
                order_id = reply.body["order"]["order_id"]
                owner[order_id] = user
                if rng.random() < 0.85:
                    tasks.append(asyncio.create_task(checkout(order_id, quantity)))
            await asyncio.sleep(rng.uniform(0.05, 0.4))

    started = time.monotonic()
    await asyncio.gather(*(shopper(f"s{i}", rounds=8) for i in range(10)))
    await asyncio.gather(*tasks)
    assert time.monotonic() - started < 60

    # every delivery of a payment got the first answer
    for payment_id, replies in answers.items():
        assert all(r == replies[0] for r in replies), (seed, payment_id, replies)
    decided = {payment_id: replies[0] for payment_id, replies in answers.items()}
    paid_by: dict[str, list[str]] = defaultdict(list)
    for payment_id, payment in decided.items():
        if payment["outcome"] == "paid":
            paid_by[payment["order_id"]].append(payment_id)
        else:
            assert payment["reason"] in (
                "amount_mismatch", "already_paid", "reservation_expired",
            ), (seed, payment)  # fmt: skip
    engine = service.services.engine
    paid_units = late_units = 0
    for order_id in owner:
        fields = await engine.redis.hgetall(engine.keys.sale(sid).order(order_id))
        payers = paid_by.get(order_id, [])
        assert len(payers) <= 1, (seed, order_id, payers)
        assert (fields["status"] == "paid") == bool(payers), (seed, order_id, fields, payers)
        if payers:
            assert fields["payment_id"] == payers[0]
            paid_units += int(fields["qty"])
            late_units += int(fields["qty"]) if decided[payers[0]]["late"] else 0
    stats = await service.stats(sid)
    assert stats["paid"] == paid_units <= STOCK, (seed, stats)
    assert stats["paid_late"] == late_units, (seed, stats)
    assert stats["available"] + stats["reserved"] + stats["paid"] == STOCK, (seed, stats)
    await _payments_in_postgres(service, decided, seed)
    await assert_reconciled(service, sid)


async def _payments_in_postgres(
    service: Service, decided: dict[str, dict[str, Any]], seed: int
) -> None:
    deadline = time.monotonic() + 15
    while True:
        rows = await service.services.pool.fetch(
            "SELECT payment_id, outcome, reason, late FROM payments WHERE payment_id = ANY($1)",
            list(decided),
        )
        if len(rows) == len(decided) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    stored = {r["payment_id"]: (r["outcome"], r["reason"], r["late"]) for r in rows}
    expected = {p: (d["outcome"], d["reason"], d["late"]) for p, d in decided.items()}
    assert stored == expected, seed
