"""Thousands of concurrent buyers on a small stock: exactly the stock sells, nobody beyond the
limit, and PostgreSQL holds exactly the sold orders."""

from __future__ import annotations

import random
from collections import Counter

from tests.helpers import Service, gather_limited


async def test_crowd_sells_exactly_the_stock(service: Service) -> None:
    stock, limit = 150, 2
    sale = await service.create_sale(stock=stock, per_user_limit=limit)
    rng = random.Random(42)
    # 3000 attempts by 1000 shoppers: most try more than once, some ask for 2 units at a time
    attempts = [(f"u{rng.randrange(1000)}", rng.choice([1, 1, 1, 2])) for _ in range(3000)]
    replies = await gather_limited(
        300, *(service.buy(sale["sale_id"], user, {"quantity": q}) for user, q in attempts)
    )

    statuses = Counter(r.status for r in replies)
    assert set(statuses) <= {201, 409}, statuses
    errors = Counter(r.body["error"] for r in replies if r.status == 409)
    assert set(errors) <= {"sold_out", "limit_reached"}, errors

    held: Counter[str] = Counter()
    orders = {}
    for (user, quantity), reply in zip(attempts, replies, strict=True):
        if reply.status == 201:
            order = reply.body["order"]
            assert order["user_id"] == user
            assert order["quantity"] == quantity
            assert order["status"] == "reserved"
            held[user] += quantity
            orders[order["order_id"]] = order
    assert sum(held.values()) == stock, "sold units must equal the stock exactly"
    assert max(held.values()) <= limit
    assert len(orders) == statuses[201], "order ids are unique"

    stats = await service.wait_for_postgres(sale["sale_id"])
    assert stats["available"] == 0
    assert stats["reserved"] == stock
    rows = await service.services.pool.fetch(
        "SELECT order_id, user_id, quantity, status FROM orders WHERE sale_id = $1",
        sale["sale_id"],
    )
    assert {r["order_id"] for r in rows} == set(orders)
    for row in rows:
        assert row["user_id"] == orders[row["order_id"]]["user_id"]
        assert row["quantity"] == orders[row["order_id"]]["quantity"]
        assert row["status"] == "reserved"


async def test_sale_view_follows_the_stock(service: Service) -> None:
    sale = await service.create_sale(stock=2, per_user_limit=2)
    view = await service.call("GET", f"/v1/sales/{sale['sale_id']}")
    assert view.status == 200
    assert view.body["sale"]["status"] == "open"
    assert view.body["sale"]["available"] == 2
    assert set(view.body["sale"]) == {
        "sale_id", "sku", "name", "price_cents", "stock", "available", "per_user_limit",
        "starts_at", "ends_at", "status", "fcode_stock", "fcode_available", "fcode_opens_at",
        "rate_limits", "currency",
    }  # fmt: skip
    assert view.body["sale"]["rate_limits"] == {
        "per_user": {"rate": 10.0, "burst": 20}, "per_address": {"rate": 0.0, "burst": 0},
    }  # fmt: skip
    assert (await service.buy(sale["sale_id"], "a", {"quantity": 2})).status == 201
    view = await service.call("GET", f"/v1/sales/{sale['sale_id']}")
    assert view.body["sale"]["available"] == 0
    assert view.body["sale"]["status"] == "sold_out"
