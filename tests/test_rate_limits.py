"""Rate limits per shopper and per client address on buy, F-code buy and book (GCRA in the
same script as the operation): 429 ``rate_limited`` with Retry-After, and a refused request
changes nothing but the limiter."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.booking_helpers import at, book
from tests.helpers import Reply, Service, gather_limited
from tests.test_fcode_redeem import fcode_sale, put_codes


def _refused(reply: Reply) -> bool:
    if reply.status != 429:
        return False
    assert reply.body["error"] == "rate_limited", reply.body
    assert int(reply.headers["Retry-After"]) >= 1
    return True


async def test_a_shopper_gets_the_burst_and_nothing_more(service: Service) -> None:
    sale = await service.create_sale(stock=100, per_user_limit=100, rate_per_user=0.5,
                                     burst_per_user=5)  # fmt: skip
    sale_id = sale["sale_id"]
    replies = await gather_limited(20, *(service.buy(sale_id, "hammer") for _ in range(20)))
    assert Counter(r.status for r in replies) == {201: 5, 429: 15}, [r.body for r in replies]
    assert sum(_refused(r) for r in replies) == 15
    stats = await service.stats(sale_id)
    assert (stats["reserved"], stats["available"]) == (5, 95)  # a refusal reserved nothing
    # another shopper has a limiter of their own
    assert (await service.buy(sale_id, "calm")).status == 201


async def test_the_allowance_comes_back_at_the_rate(service: Service) -> None:
    sale = await service.create_sale(stock=100, per_user_limit=100, rate_per_user=10,
                                     burst_per_user=2)  # fmt: skip
    sale_id = sale["sale_id"]
    assert [(await service.buy(sale_id, "u")).status for _ in range(3)] == [201, 201, 429]
    await asyncio.sleep(0.15)  # one interval (0.1 s) and a margin
    assert (await service.buy(sale_id, "u")).status == 201
    assert (await service.buy(sale_id, "u")).status == 429


async def test_one_address_is_limited_across_its_shoppers(service: Service) -> None:
    sale = await service.create_sale(stock=100, rate_per_address=0.5, burst_per_address=3)
    sale_id = sale["sale_id"]
    # the test client always comes from 127.0.0.1
    replies = await gather_limited(10, *(service.buy(sale_id, f"nat{i}") for i in range(10)))
    assert Counter(r.status for r in replies) == {201: 3, 429: 7}
    assert sum(_refused(r) for r in replies) == 7


async def test_fcode_buys_count_against_the_same_limit(service: Service) -> None:
    sale = await service.create_sale(**fcode_sale(stock=10, fcode_stock=5), rate_per_user=0.5,
                                     burst_per_user=2)  # fmt: skip
    sale_id = sale["sale_id"]
    codes = await put_codes(service, sale_id, 3)
    answers = [await service.buy(sale_id, "fc", {"fcode": code}) for code in codes]
    assert [r.status for r in answers] == [201, 409, 429], [r.body for r in answers]
    assert answers[1].body["error"] == "limit_reached"
    # the refused code is still usable by someone else
    assert (await service.buy(sale_id, "other", {"fcode": codes[2]})).status == 201


async def test_booking_is_limited_too(service: Service) -> None:
    sale = await service.create_sale(
        booking_opens_at=at(-60), booking_closes_at=at(30), starts_at=at(30), ends_at=at(3600),
        rate_per_user=0.5, burst_per_user=3,
    )  # fmt: skip
    replies = [await book(service, sale["sale_id"], "b") for _ in range(5)]
    assert [r.status for r in replies] == [201, 200, 200, 429, 429]
    assert _refused(replies[3])
    assert (await book(service, sale["sale_id"], "b2")).status == 201


async def test_limits_are_shown_and_checked(service: Service) -> None:
    sale = await service.create_sale(stock=5, rate_per_user=2.5, burst_per_user=4,
                                     rate_per_address=0)  # fmt: skip
    view = await service.call("GET", f"/v1/sales/{sale['sale_id']}")
    assert view.body["sale"]["rate_limits"] == {
        "per_user": {"rate": 2.5, "burst": 4}, "per_address": {"rate": 0.0, "burst": 0},
    }  # fmt: skip
    unlimited = await service.create_sale(stock=50, per_user_limit=50, rate_per_user=0)
    replies = await gather_limited(40, *(service.buy(unlimited["sale_id"], "x")
                                         for _ in range(40)))  # fmt: skip
    assert {r.status for r in replies} == {201}
    bad_fields: list[dict[str, object]] = [
        {"rate_per_user": -1}, {"rate_per_user": "fast"}, {"burst_per_user": 0},
        {"rate_per_address": 0, "burst_per_address": 5}, {"rate_per_user": True},
    ]  # fmt: skip
    for bad in bad_fields:
        reply = await service.call("POST", "/v1/admin/sales", json={**_spec(), **bad},
                                   headers=service.admin_headers)  # fmt: skip
        assert reply.status == 400, (bad, reply.body)
        assert reply.body["error"] == "invalid_request"
        assert next(iter(bad)) in reply.body["message"]


def _spec() -> dict[str, object]:
    from tests.helpers import sale_spec

    return sale_spec()
