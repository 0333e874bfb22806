"""Who F-code failures lock out: guessers, not the losers of a race or shoppers who share an
address. Every request of these tests comes from 127.0.0.1: one address, like a carrier NAT."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from flashsale.fcodes import codes
from flashsale.settings import Settings
from tests.conftest import ServiceFactory
from tests.helpers import Service, gather_limited
from tests.test_fcode_redeem import fcode_sale, put_codes, revoke

ADDRESS = "127.0.0.1"


async def guess_failures(service: Service, sale_id: str) -> int:
    return (await service.services.engine.get_sale(sale_id)).counters.fcode_failures


async def address_counter_exists(service: Service, sale_id: str) -> bool:
    engine = service.services.engine
    key = engine.keys.sale(sale_id).fcode_failures_of_address(ADDRESS)
    return bool(await engine.redis.exists(key))


def test_the_address_limit_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLASHSALE_FCODE_FAILURES_PER_ADDRESS", raising=False)
    assert Settings().fcode_failures_per_address == 0
    assert Settings.from_env().fcode_failures_per_address == 0


@pytest.mark.parametrize("per_address", [None, 20], ids=["default", "address_limit_20"])
async def test_losing_a_race_locks_nobody_out(
    make_service: ServiceFactory, per_address: int | None
) -> None:
    """30 shoppers behind one address race for one popular code: 29 hear fcode_used. None of
    them guessed: each still redeems a code of their own."""
    overrides: dict[str, Any] = {}
    if per_address is not None:
        overrides["fcode_failures_per_address"] = per_address
    service = await make_service(**overrides)
    sale = await service.create_sale(**fcode_sale(stock=100, fcode_stock=80, per_user_limit=2))
    sale_id = sale["sale_id"]
    popular, *own = await put_codes(service, sale_id, 32)
    racers = [f"r{i}" for i in range(30)]
    replies = await gather_limited(
        30, *(service.buy(sale_id, user, {"fcode": popular}) for user in racers)
    )
    outcomes = Counter((r.status, r.body.get("error")) for r in replies)
    assert outcomes == {(201, None): 1, (409, "fcode_used"): 29}
    assert await guess_failures(service, sale_id) == 0, "losing a race is not guessing"
    mine = [await service.buy(sale_id, user, {"fcode": own[i]}) for i, user in enumerate(racers)]
    assert [r.status for r in mine] == [201] * 30, {r.body.get("error") for r in mine}
    neighbour = await service.buy(sale_id, "neighbour", {"fcode": own[30]})
    assert neighbour.status == 201


async def test_retrying_ones_own_code_is_never_throttled(service: Service) -> None:
    # no rate limit: the retries below come faster than any sale would allow
    spec = fcode_sale(stock=10, fcode_stock=5, per_user_limit=2, rate_per_user=0)
    sale = await service.create_sale(**spec)
    sale_id = sale["sale_id"]
    used, revoked, fresh = await put_codes(service, sale_id, 3)
    assert (await service.buy(sale_id, "alice", {"fcode": used})).status == 201
    await revoke(service, sale_id, revoked)
    for _ in range(12):  # well past the per-user limit of 5
        again = await service.buy(sale_id, "alice", {"fcode": used})
        assert (again.status, again.body["error"]) == (409, "fcode_used")
        gone = await service.buy(sale_id, "alice", {"fcode": revoked})
        assert (gone.status, gone.body["error"]) == (409, "fcode_revoked")
    assert await guess_failures(service, sale_id) == 0
    assert (await service.buy(sale_id, "alice", {"fcode": fresh})).status == 201


async def test_guesses_still_throttle_the_guesser(service: Service) -> None:
    """Unknown codes, another sale's codes and codes bound to someone else are guesses."""
    sale = await service.create_sale(**fcode_sale())
    other = await service.create_sale(**fcode_sale())
    sale_id = sale["sale_id"]
    good, *_ = await put_codes(service, sale_id, 1)
    [bound] = await put_codes(service, sale_id, 1, bound="someone-else")
    [foreign] = await put_codes(service, other["sale_id"], 1)
    attempts = [codes.new_code(), bound, foreign, codes.new_code(), codes.new_code()]
    for code in attempts:  # the per-user limit is 5
        reply = await service.buy(sale_id, "guesser", {"fcode": code})
        assert (reply.status, reply.body["error"]) == (409, "fcode_invalid")
    throttled = await service.buy(sale_id, "guesser", {"fcode": good})
    assert (throttled.status, throttled.body["error"]) == (429, "fcode_throttled")
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60
    assert await guess_failures(service, sale_id) == 5
    # the guesser's neighbours behind the same address are not held back
    assert not await address_counter_exists(service, sale_id)
    assert (await service.buy(sale_id, "honest", {"fcode": good})).status == 201


async def test_no_address_limit_when_it_is_zero(make_service: ServiceFactory) -> None:
    service = await make_service(fcode_failures_per_address=0)
    sale = await service.create_sale(**fcode_sale(stock=10, fcode_stock=5))
    sale_id = sale["sale_id"]
    [good] = await put_codes(service, sale_id, 1)
    for i in range(40):  # one guess each from many shoppers behind one address
        reply = await service.buy(sale_id, f"g{i}", {"fcode": codes.new_code()})
        assert (reply.status, reply.body["error"]) == (409, "fcode_invalid")
    assert not await address_counter_exists(service, sale_id)
    assert (await service.buy(sale_id, "holder", {"fcode": good})).status == 201


async def test_an_address_limit_when_set_throttles_that_address(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(fcode_failures_per_address=8)
    sale = await service.create_sale(**fcode_sale())
    sale_id = sale["sale_id"]
    used, good = await put_codes(service, sale_id, 2)
    assert (await service.buy(sale_id, "winner", {"fcode": used})).status == 201
    for i in range(10):  # losers of a race do not count against the address either
        assert (await service.buy(sale_id, f"l{i}", {"fcode": used})).body["error"] == "fcode_used"
    for i in range(8):
        reply = await service.buy(sale_id, f"g{i}", {"fcode": codes.new_code()})
        assert (reply.status, reply.body["error"]) == (409, "fcode_invalid")
    crowd = await service.buy(sale_id, "holder", {"fcode": good})
    assert (crowd.status, crowd.body["error"]) == (429, "fcode_throttled")
    assert await guess_failures(service, sale_id) == 8
