"""A reservation is paid, cancelled or expires; its units return to the sale exactly once."""

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
    paid = await service.order_action(order_id, "u1", "pay")
    assert paid.status == 200
    assert paid.body["order"]["status"] == "paid"
    again = await service.order_action(order_id, "u1", "pay")
    assert again.status == 200, "paying twice is fine"
    assert again.body["order"]["status"] == "paid"
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
    assert (await service.order_action(order_id, "u1", "pay")).body["error"] == "order_cancelled"
    # the unit is back, and the sold-out memory of this process let go of it at once
    assert (await service.buy(sale["sale_id"], "u2")).status == 201
    # the shopper who cancelled may buy again: the cancelled unit no longer counts to the limit
    assert (await service.buy(sale["sale_id"], "u1")).body["error"] == "sold_out"
    stats = await service.wait_for_postgres(sale["sale_id"])
    assert (stats["available"], stats["reserved"], stats["cancelled"]) == (0, 1, 1)


async def test_expiry_returns_units_and_refuses_late_payment(service: Service) -> None:
    sale = await service.create_sale(stock=3, reservation_ttl_s=1)
    orders = [await _reserve(service, sale["sale_id"], f"u{i}") for i in range(3)]
    assert (await service.buy(sale["sale_id"], "late")).body["error"] == "sold_out"
    await asyncio.sleep(1.6)  # deadline + a few sweeper rounds
    stats = await service.stats(sale["sale_id"])
    assert (stats["available"], stats["reserved"], stats["expired"]) == (3, 0, 3)
    for i, order_id in enumerate(orders):
        late = await service.order_action(order_id, f"u{i}", "pay")
        assert late.status == 409
        assert late.body["error"] == "order_expired"
    assert (await service.stats(sale["sale_id"]))["available"] == 3, "no unit revived"
    # the shoppers whose reservations lapsed may buy again
    assert (await service.buy(sale["sale_id"], "u0")).status == 201
    stats = await service.wait_for_postgres(sale["sale_id"])
    assert stats["orders_in_postgres"]["expired"] == 3


async def test_late_payment_before_the_sweeper_expires_instead(make_service) -> None:  # type: ignore[no-untyped-def]
    service: Service = await make_service(run_sweeper=False)
    sale = await service.create_sale(stock=1, reservation_ttl_s=1)
    order_id = await _reserve(service, sale["sale_id"], "u1")
    await asyncio.sleep(1.1)
    late = await service.order_action(order_id, "u1", "pay")
    assert late.body["error"] == "order_expired"
    stats = await service.stats(sale["sale_id"])
    assert (stats["available"], stats["expired"]) == (1, 1)
    # the sweeper that comes later finds nothing more to return: exactly once
    assert await Sweeper(service.services.engine).sweep_once() == 0
    stats = await service.stats(sale["sale_id"])
    assert (stats["available"], stats["expired"], stats["reserved"]) == (1, 1, 0)


async def test_pay_racing_expiry_settles_each_order_once(make_service) -> None:  # type: ignore[no-untyped-def]
    """Payments land around the deadline while several sweepers run: every order ends either
    paid or expired, never both, and the counters add up."""
    service: Service = await make_service(run_sweeper=False)
    stock = 60
    sale = await service.create_sale(stock=stock, reservation_ttl_s=1)
    sale_id = sale["sale_id"]
    owners = {await _reserve(service, sale_id, f"u{i}"): f"u{i}" for i in range(stock)}
    sweepers = [Sweeper(service.services.engine, batch_size=7) for _ in range(3)]
    rng = random.Random(3)

    async def pay_later(order_id: str) -> int:
        await asyncio.sleep(rng.uniform(0.85, 1.15))
        reply = await service.order_action(order_id, owners[order_id], "pay")
        return reply.status

    async def sweep_repeatedly(sweeper: Sweeper) -> None:
        for _ in range(30):
            await sweeper.sweep_once()
            await asyncio.sleep(0.01)

    results = await asyncio.gather(
        gather_limited(60, *(pay_later(o) for o in owners)),
        *(sweep_repeatedly(s) for s in sweepers),
    )
    pay_statuses: list[int] = results[0]
    assert set(pay_statuses) <= {200, 409}
    statuses = []
    for order_id, user in owners.items():
        got = await service.call("GET", f"/v1/orders/{order_id}", headers=service.auth(user))
        statuses.append(got.body["order"]["status"])
    paid, expired = statuses.count("paid"), statuses.count("expired")
    assert paid + expired == stock
    assert paid == pay_statuses.count(200)
    stats = await service.stats(sale_id)
    assert stats["paid"] == paid
    assert stats["expired"] == expired
    assert stats["available"] == expired
    assert stats["reserved"] == 0
    assert stats["available"] + stats["reserved"] + stats["paid"] == stock
    await service.wait_for_postgres(sale_id)
