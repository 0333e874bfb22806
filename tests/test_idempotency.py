"""Idempotency-Key: a repeat returns the first answer and reserves nothing more."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flashsale.settings import ConfirmMode
from tests.conftest import ServiceFactory
from tests.helpers import CountingScript, Service, gather_limited


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


async def test_replay_after_sell_out_returns_the_first_answer(
    make_service: ServiceFactory,
) -> None:
    """A shopper whose 201 was lost holds the unit: asking again with the key must say so,
    even once the sale is sold out and this process answers the crowd from memory."""
    service = await make_service(sold_out_recheck_s=60.0)
    sale = await service.create_sale(stock=1)
    sale_id = sale["sale_id"]
    first = await service.buy(sale_id, "alice", key="lost-reply")
    assert first.status == 201
    late = await service.buy(sale_id, "bob")
    assert late.body["error"] == "sold_out"
    assert service.services.engine.sold_out.is_sold_out(sale_id)
    again = await service.buy(sale_id, "alice", key="lost-reply")
    assert (again.status, again.headers.get("Idempotent-Replayed")) == (201, "true")
    assert again.body == first.body
    stats = await service.stats(sale_id)
    assert (stats["available"], stats["reserved"]) == (0, 1)


async def test_replay_in_a_process_whose_gate_another_shopper_closed(
    make_service: ServiceFactory,
) -> None:
    """The first answer came from one process; the retry lands on another that has since
    told someone else "sold out" and remembers it."""
    first_process = await make_service()
    other_process = await make_service(sold_out_recheck_s=60.0)
    sale = await first_process.create_sale(stock=1)
    sale_id = sale["sale_id"]
    first = await first_process.buy(sale_id, "alice", key="k")
    assert first.status == 201
    assert (await other_process.buy(sale_id, "bob")).body["error"] == "sold_out"
    engine = other_process.services.engine
    assert engine.sold_out.is_sold_out(sale_id)
    counter = CountingScript(engine.scripts.buy)
    engine.scripts.buy = counter  # type: ignore[assignment]
    again = await other_process.buy(sale_id, "alice", key="k")
    assert (again.status, again.headers.get("Idempotent-Replayed")) == (201, "true")
    assert again.body == first.body
    # the crowd without a key is still answered from memory, at no Redis call
    crowd = [await other_process.buy(sale_id, f"c{i}") for i in range(5)]
    assert {(r.status, r.body["error"]) for r in crowd} == {(409, "sold_out")}
    assert counter.calls == 1
    # a new key is a new request: Redis says whether a unit came back
    fresh = await other_process.buy(sale_id, "carol", key="k")
    assert (fresh.status, fresh.body["error"]) == (409, "sold_out")


async def test_a_different_body_is_refused_after_sell_out(make_service: ServiceFactory) -> None:
    service = await make_service(sold_out_recheck_s=60.0)
    sale = await service.create_sale(stock=1, per_user_limit=2)
    sale_id = sale["sale_id"]
    assert (await service.buy(sale_id, "alice", key="k")).status == 201
    assert (await service.buy(sale_id, "bob")).body["error"] == "sold_out"
    reused = await service.buy(sale_id, "alice", {"quantity": 2}, key="k")
    assert (reused.status, reused.body["error"]) == (422, "idempotency_key_reused")


async def _pause(service: Service, sale_id: str) -> None:
    path = f"/v1/admin/sales/{sale_id}/pause"
    assert (await service.call("POST", path, headers=service.admin_headers)).status == 200


async def _close(service: Service, sale_id: str) -> None:
    path = f"/v1/admin/sales/{sale_id}/close"
    assert (await service.call("POST", path, headers=service.admin_headers)).status == 200


async def _end(service: Service, sale_id: str) -> None:
    await asyncio.sleep(1.6)  # the sale below ends 1.5 s after its creation


async def _exhaust_rate(service: Service, sale_id: str) -> None:
    refused = await service.buy(sale_id, "alice", key="another-request")
    assert (refused.status, refused.body["error"]) == (429, "rate_limited")


@pytest.mark.parametrize(
    ("change", "refusal", "fields"),
    [
        (_pause, "sale_paused", {}),
        (_close, "sale_ended", {}),
        (_end, "sale_ended", {"ends_in_s": 1.5}),
        (_exhaust_rate, "rate_limited", {"rate_per_user": 0.01, "burst_per_user": 1}),
    ],
    ids=["paused", "closed", "ended", "rate_limited"],
)
async def test_replay_whatever_the_sale_state(
    service: Service,
    change: Callable[[Service, str], Awaitable[None]],
    refusal: str,
    fields: dict[str, Any],
) -> None:
    spec: dict[str, Any] = {"stock": 5, "per_user_limit": 2, **fields}
    if "ends_in_s" in spec:
        spec["ends_at"] = (datetime.now(UTC) + timedelta(seconds=spec.pop("ends_in_s"))).isoformat()
    sale = await service.create_sale(**spec)
    sale_id = sale["sale_id"]
    first = await service.buy(sale_id, "alice", key="k")
    assert first.status == 201
    await change(service, sale_id)
    if refusal != "rate_limited":  # a new request is refused...
        assert (await service.buy(sale_id, "bob", key="k")).body["error"] == refusal
    again = await service.buy(sale_id, "alice", key="k")  # ...the first answer is not
    assert (again.status, again.headers.get("Idempotent-Replayed")) == (201, "true")
    assert again.body == first.body


@pytest.mark.parametrize(("action", "status"), [("cancel", "cancelled"), ("pay", "paid")])
async def test_replay_shows_the_order_as_it_is_now(
    service: Service, action: str, status: str
) -> None:
    sale = await service.create_sale(stock=1)
    sale_id = sale["sale_id"]
    first = await service.buy(sale_id, "alice", key="k")
    order_id = first.body["order"]["order_id"]
    await asyncio.sleep(0.01)  # the change gets a later updated_at
    if action == "pay":  # the payment service tells us
        assert (await service.pay(order_id)).body["payment"]["outcome"] == "paid"
    else:
        assert (await service.order_action(order_id, "alice", action)).status == 200
    settled = await service.call("GET", f"/v1/orders/{order_id}", headers=service.auth("alice"))
    again = await service.buy(sale_id, "alice", key="k")
    assert (again.status, again.headers.get("Idempotent-Replayed")) == (201, "true")
    assert again.body["order"] == settled.body["order"]
    assert again.body["order"]["status"] == status
    assert again.body["order"]["updated_at"] != first.body["order"]["updated_at"]
    stats = await service.stats(sale_id)
    assert stats["reserved"] == 0, "the replay reserved nothing"


async def test_replay_shows_an_expired_order_as_expired(service: Service) -> None:
    sale = await service.create_sale(stock=1, reservation_ttl_s=1)
    sale_id = sale["sale_id"]
    first = await service.buy(sale_id, "alice", key="k")
    order_id = first.body["order"]["order_id"]
    deadline = time.monotonic() + 10
    while True:  # the sweeper returns the unit
        got = await service.call("GET", f"/v1/orders/{order_id}", headers=service.auth("alice"))
        if got.body["order"]["status"] == "expired":
            break
        assert time.monotonic() < deadline, "the reservation never expired"
        await asyncio.sleep(0.05)
    again = await service.buy(sale_id, "alice", key="k")
    assert (again.status, again.headers.get("Idempotent-Replayed")) == (201, "true")
    assert again.body["order"] == got.body["order"]
    assert (await service.stats(sale_id))["available"] == 1, "the replay reserved nothing"


async def test_replay_in_confirm_mode_postgres(make_service: ServiceFactory) -> None:
    """A replay waits for the first answer's row like the first answer did, shows the order as
    it is now, and never writes an older state over a newer one."""
    service = await make_service(confirm_mode=ConfirmMode.POSTGRES)
    sale = await service.create_sale(stock=1)
    sale_id = sale["sale_id"]
    first = await service.buy(sale_id, "alice", key="k")
    order_id = first.body["order"]["order_id"]
    assert (await service.buy(sale_id, "bob")).body["error"] == "sold_out"
    sold_out_replay = await service.buy(sale_id, "alice", key="k")
    assert (sold_out_replay.status, sold_out_replay.body) == (201, first.body)
    cancelled = await service.order_action(order_id, "alice", "cancel")
    await service.wait_for_postgres(sale_id)
    again = await service.buy(sale_id, "alice", key="k")
    assert (again.status, again.headers.get("Idempotent-Replayed")) == (201, "true")
    assert again.body["order"] == cancelled.body["order"]
    row = await service.services.pool.fetchrow(
        "SELECT status, version FROM orders WHERE order_id = $1", order_id
    )
    assert (row["status"], row["version"]) == ("cancelled", 2)
