"""A reservation is paid, cancelled or expires; its units return to the sale exactly once, and
a payment after the expiry takes a free unit only where one is there, never the same twice."""

from __future__ import annotations

import asyncio
import random

from flashsale.engine.sweeper import Sweeper
from tests.helpers import Service, gather_limited


async def _reserve(service: Service, sale_id: str, user: str) -> str:
    reply = await service.buy(sale_id, user)
    assert reply.status == 201, reply.body
    order_id: str = reply.body["order"]["order_id"]
    return order_id


async def test_pay_then_read_the_order(service: Service) -> None:
    sale = await service.create_sale(stock=3)
    order_id = await _reserve(service, sale["sale_id"], "u1")
    paid = await service.pay(order_id)
    assert paid.status == 200
    assert paid.body["payment"]["outcome"] == "paid"
    again = await service.pay(order_id)
    assert again.status == 200, "a second payment is answered, and must be given back"
    assert again.body["payment"]["reason"] == "already_paid"
    got = await service.call("GET", f"/v1/orders/{order_id}", headers=service.auth("u1"))
    assert got.status == 200
    assert got.body["order"]["status"] == "paid"
    assert (await service.order_action(order_id, "u1", "cancel")).body["error"] == "order_paid"
    stats = await service.wait_for_postgres(sale["sale_id"])
    assert (stats["available"], stats["reserved"], stats["paid"]) == (2, 0, 1)
    assert stats["orders_in_postgres"]["paid"] == 1


async def test_cancel_returns_the_unit(service: Service) -> None:
    sale = await service.create_sale(stock=1)
    order_id = await _reserve(service, sale["sale_id"], "u1")
    assert (await service.buy(sale["sale_id"], "u2")).body["error"] == "sold_out"
    cancelled = await service.order_action(order_id, "u1", "cancel")
    assert cancelled.status == 200
    assert cancelled.body["order"]["status"] == "cancelled"
    assert (await service.order_action(order_id, "u1", "cancel")).status == 200
    assert (await service.pay(order_id)).body["payment"]["reason"] == "order_cancelled"
    # the unit is back, and the sold-out memory of this process let go of it at once
    assert (await service.buy(sale["sale_id"], "u2")).status == 201
    # the shopper who cancelled may buy again: the cancelled unit no longer counts to the limit
    assert (await service.buy(sale["sale_id"], "u1")).body["error"] == "sold_out"
    stats = await service.wait_for_postgres(sale["sale_id"])
    assert (stats["available"], stats["reserved"], stats["cancelled"]) == (0, 1, 1)


async def test_expiry_returns_units_and_late_payments_take_only_free_ones(
    service: Service,
) -> None:
    sale = await service.create_sale(stock=3, reservation_ttl_s=2)
    orders = [await _reserve(service, sale["sale_id"], f"u{i}") for i in range(3)]
    assert (await service.buy(sale["sale_id"], "late")).body["error"] == "sold_out"
    await asyncio.sleep(2.6)  # deadline + a few sweeper rounds
    stats = await service.stats(sale["sale_id"])
    assert (stats["available"], stats["reserved"], stats["expired"]) == (3, 0, 3)
    # two of the returned units sell again; the late payments share the one left
    assert (await service.buy(sale["sale_id"], "x1")).status == 201
    assert (await service.buy(sale["sale_id"], "x2")).status == 201
    outcomes = [(await service.pay(order_id)).body["payment"] for order_id in orders]
    assert [(p["outcome"], p["late"], p["reason"]) for p in outcomes] == [
        ("paid", True, None),
        ("refund_required", False, "reservation_expired"),
        ("refund_required", False, "reservation_expired"),
    ]
    stats = await service.stats(sale["sale_id"])
    assert (stats["available"], stats["reserved"], stats["paid"]) == (0, 2, 1), "none revived"
    assert (stats["expired"], stats["paid_late"]) == (3, 1), "each unit returned once"
    # a shopper whose reservation lapsed and was refunded may buy again once units come back
    assert (await service.buy(sale["sale_id"], "u1")).body["error"] == "sold_out"
    stats = await service.wait_for_postgres(sale["sale_id"])
    assert stats["orders_in_postgres"]["expired"] == 2


async def test_late_payment_before_the_sweeper_expires_instead(make_service) -> None:  # type: ignore[no-untyped-def]
    service: Service = await make_service(run_sweeper=False)
    sale = await service.create_sale(stock=1, reservation_ttl_s=1)
    order_id = await _reserve(service, sale["sale_id"], "u1")
    await asyncio.sleep(1.1)
    late = await service.pay(order_id)
    # the unit went back to the sale; the payment may not take it straight back
    assert late.body["payment"]["reason"] == "reservation_expired"
    stats = await service.stats(sale["sale_id"])
    assert (stats["available"], stats["expired"]) == (1, 1)
    # the sweeper that comes later finds nothing more to return: exactly once
    assert await Sweeper(service.services.engine).sweep_once() == 0
    stats = await service.stats(sale["sale_id"])
    assert (stats["available"], stats["expired"], stats["reserved"]) == (1, 1, 0)


async def test_pay_racing_expiry_settles_each_order_once(make_service) -> None:  # type: ignore[no-untyped-def]
    """Payments land around the deadline while several sweepers run: every order ends either
    paid (in time, or late with a unit that was free) or expired, and the counters add up."""
    service: Service = await make_service(run_sweeper=False)
    stock = 60
    sale = await service.create_sale(stock=stock, reservation_ttl_s=1)
    sale_id = sale["sale_id"]
    owners = {await _reserve(service, sale_id, f"u{i}"): f"u{i}" for i in range(stock)}
    sweepers = [Sweeper(service.services.engine, batch_size=7) for _ in range(3)]
    rng = random.Random(3)

    async def pay_later(order_id: str) -> str:
        await asyncio.sleep(rng.uniform(0.85, 1.15))
        reply = await service.pay(order_id)
        assert reply.status == 200, reply.body
        outcome: str = reply.body["payment"]["outcome"]
        return outcome

    async def sweep_repeatedly(sweeper: Sweeper) -> None:
        for _ in range(30):
            await sweeper.sweep_once()
            await asyncio.sleep(0.01)

    results = await asyncio.gather(
        gather_limited(60, *(pay_later(o) for o in owners)),
        *(sweep_repeatedly(s) for s in sweepers),
    )
    outcomes: list[str] = results[0]
    assert set(outcomes) <= {"paid", "refund_required"}
    statuses = []
    for order_id, user in owners.items():
        got = await service.call("GET", f"/v1/orders/{order_id}", headers=service.auth(user))
        statuses.append(got.body["order"]["status"])
    paid, expired = statuses.count("paid"), statuses.count("expired")
    assert paid + expired == stock
    assert paid == outcomes.count("paid")
    stats = await service.stats(sale_id)
    assert stats["paid"] == paid
    assert stats["expired"] - stats["paid_late"] == expired
    assert stats["available"] == expired
    assert stats["reserved"] == 0
    assert stats["available"] + stats["reserved"] + stats["paid"] == stock
    await service.wait_for_postgres(sale_id)
