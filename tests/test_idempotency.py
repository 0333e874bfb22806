"""Idempotency-Key: a repeat returns the first answer and reserves nothing more."""

from __future__ import annotations

from tests.helpers import Service, gather_limited


async def test_sequential_replay_returns_the_first_answer(service: Service) -> None:
    sale = await service.create_sale(stock=5, per_user_limit=3)
    first = await service.buy(sale["sale_id"], "alice", {"quantity": 2}, key="k-1")
    assert first.status == 201
    assert "Idempotent-Replayed" not in first.headers
    again = await service.buy(sale["sale_id"], "alice", {"quantity": 2}, key="k-1")
    assert again.status == 201
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.body == first.body
    stats = await service.stats(sale["sale_id"])
    assert (stats["available"], stats["reserved"]) == (3, 2)


async def test_same_key_different_body_is_refused(service: Service) -> None:
    sale = await service.create_sale(stock=5, per_user_limit=3)
    assert (await service.buy(sale["sale_id"], "bob", {"quantity": 1}, key="k")).status == 201
    reused = await service.buy(sale["sale_id"], "bob", {"quantity": 2}, key="k")
    assert reused.status == 422
    assert reused.body["error"] == "idempotency_key_reused"
    assert (await service.stats(sale["sale_id"]))["reserved"] == 1


async def test_keys_are_per_user(service: Service) -> None:
    sale = await service.create_sale(stock=5)
    a = await service.buy(sale["sale_id"], "a", key="same")
    b = await service.buy(sale["sale_id"], "b", key="same")
    assert a.status == b.status == 201
    assert a.body["order"]["order_id"] != b.body["order"]["order_id"]


async def test_concurrent_replays_reserve_once(service: Service) -> None:
    sale = await service.create_sale(stock=100, per_user_limit=5)
    replies = await gather_limited(
        100, *(service.buy(sale["sale_id"], "carol", key="double-click") for _ in range(100))
    )
    assert {r.status for r in replies} == {201}
    assert len({r.body["order"]["order_id"] for r in replies}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") != "true" for r in replies) == 1
    stats = await service.stats(sale["sale_id"])
    assert (stats["available"], stats["reserved"]) == (99, 1)


async def test_refusals_are_not_remembered(service: Service) -> None:
    """Only a reservation is remembered: a refused buy reserved nothing, so a retry with the
    same key is a fresh attempt and sees the sale as it is now."""
    sale = await service.create_sale(stock=1)
    first = await service.buy(sale["sale_id"], "x")
    refused = await service.buy(sale["sale_id"], "y", key="retry-me")
    assert refused.body["error"] == "sold_out"
    cancel = await service.order_action(first.body["order"]["order_id"], "x", "cancel")
    assert cancel.status == 200
    retried = await service.buy(sale["sale_id"], "y", key="retry-me")
    assert retried.status == 201
    assert "Idempotent-Replayed" not in retried.headers
