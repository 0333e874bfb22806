"""The lottery draw: a permutation, reproducible from its published seed, computed the same in
Redis (the buy script) as in the reference implementation anyone can run."""

from __future__ import annotations

import hashlib
import re
import statistics
from importlib import resources

import pytest
from redis.asyncio import Redis

from flashsale.booking import lottery
from tests.booking_helpers import book, me, public_sale, queued_sale, sleep_until
from tests.helpers import Service, gather_limited


@pytest.mark.parametrize("n", [*range(1, 70), 255, 256, 257, 1000, 4097])
def test_the_draw_is_a_permutation(n: int) -> None:
    draw = lottery.Draw("seed-1", n)
    assert sorted(draw.rank(b) for b in range(1, n + 1)) == list(range(1, n + 1))


def test_the_draw_depends_on_the_seed_only() -> None:
    n = 5000
    first = [lottery.Draw("alpha", n).rank(b) for b in range(1, n + 1)]
    again = [lottery.Draw("alpha", n).rank(b) for b in range(1, n + 1)]
    other = [lottery.Draw("beta", n).rank(b) for b in range(1, n + 1)]
    assert first == again
    assert sum(a == b for a, b in zip(first, other, strict=True)) < 20  # ~1 by chance
    # early bookers get no edge: their ranks spread over the whole queue
    early = first[:500]
    assert abs(statistics.mean(early) - n / 2) < n * 0.06
    assert min(early) < n * 0.05
    assert max(early) > n * 0.95
    with pytest.raises(ValueError, match="not in 1"):
        lottery.Draw("alpha", n).rank(n + 1)


def _lua_draw_rank() -> str:
    """The draw_rank function of the buy script, as a script of its own."""
    body = resources.files("flashsale.engine").joinpath("lua/buy.lua").read_text("utf-8")
    match = re.search(r"^local function draw_rank\(.*?^end$", body, re.S | re.M)
    assert match is not None
    return (
        match.group(0)
        + """
local out = {}
for i = 3, #ARGV do out[#out + 1] = draw_rank(tonumber(ARGV[i]), tonumber(ARGV[1]), ARGV[2]) end
return out
"""
    )


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 300, 65_537, 7_500_000])
async def test_redis_draws_what_the_reference_draws(redis: Redis, n: int) -> None:
    seed = f"published-seed-{n}"
    keys = ",".join(map(str, lottery.round_keys(seed)))
    numbers = list(range(1, n + 1)) if n <= 300 else list(range(1, n + 1, max(1, n // 997)))
    ranks = await redis.eval(_lua_draw_rank(), 0, n, keys, *numbers)  # type: ignore[misc]
    draw = lottery.Draw(seed, n)
    assert ranks == [draw.rank(b) for b in numbers]


async def test_a_lottery_sale_admits_in_the_drawn_order(service: Service) -> None:
    seed = "launch-2026-seed"
    sale_id, opens_at = await queued_sale(
        service, admission="lottery", lottery_seed=seed, stock=10, opens_in_s=2.0
    )
    users = [f"l{i:02d}" for i in range(60)]
    for user in users:
        assert (await book(service, sale_id, user)).status == 201
    before = await public_sale(service, sale_id)
    # the commitment is public before the draw, the seed only after
    assert before["lottery_method"] == lottery.METHOD
    assert before["lottery_seed"] is None
    assert before["lottery_seed_sha256"] == hashlib.sha256(seed.encode()).hexdigest()
    assert (await me(service, sale_id, "l00"))["queue_rank"] is None

    await sleep_until(opens_at)
    after = await public_sale(service, sale_id)
    assert after["lottery_seed"] == seed
    draw = lottery.Draw(after["lottery_seed"], after["bookings"])
    ranks = {u: draw.rank(no) for no, u in enumerate(users, start=1)}
    replies = await gather_limited(60, *(service.buy(sale_id, u) for u in users))
    for user, reply in zip(users, replies, strict=True):
        if ranks[user] <= 10:
            assert reply.status == 201, (user, ranks[user], reply.body)
        else:
            assert reply.status == 202, (user, ranks[user], reply.body)
            assert reply.body["position"] == ranks[user] - 11
    assert (await me(service, sale_id, users[5]))["queue_rank"] == ranks[users[5]]


async def test_same_seed_same_order_other_seed_other_order(service: Service) -> None:
    users = [f"s{i:02d}" for i in range(40)]
    orders = []
    for seed in ("same", "same", "other"):
        sale_id, opens_at = await queued_sale(
            service, admission="lottery", lottery_seed=seed, stock=5, opens_in_s=1.0
        )
        for user in users:
            await book(service, sale_id, user)
        await sleep_until(opens_at)
        orders.append([(await me(service, sale_id, u))["queue_rank"] for u in users])
    assert orders[0] == orders[1]
    assert sorted(orders[0]) == list(range(1, 41))
    assert orders[0] != orders[2]


async def test_a_lottery_without_a_seed_gets_a_secret_one(service: Service) -> None:
    sale_id, _ = await queued_sale(service, admission="lottery", opens_in_s=60)
    sale = await public_sale(service, sale_id)
    assert sale["lottery_seed"] is None
    assert re.fullmatch(r"[0-9a-f]{64}", sale["lottery_seed_sha256"])
    row = await service.services.pool.fetchrow(
        "SELECT lottery_seed FROM sales WHERE sale_id = $1", sale_id
    )
    assert hashlib.sha256(row["lottery_seed"].encode()).hexdigest() == sale["lottery_seed_sha256"]
