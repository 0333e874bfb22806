"""The F-code lane's release: at fcode_release_at the F-code units nobody redeemed pass to the
public lane, once, whoever meets the moment first (the sweeper or a buy), also when it passed
while nothing ran; units given back later follow them; queues admit shoppers for them; later
redemptions are refused and the codes stay unused. Real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from flashsale.engine.keys import Keyspace
from flashsale.engine.sweeper import Sweeper
from flashsale.fcodes import codes
from flashsale.store.sales import fetch_sale
from tests.booking_helpers import at, book, public_sale, queued_sale, sleep_until, wait_for
from tests.conftest import ServiceFactory
from tests.helpers import Service, assert_reconciled, gather_limited
from tests.test_fcode_redeem import put_codes

# seeded scenarios of the race test, run side by side; FLASHSALE_RELEASE_RUNS=200 for more,
# FLASHSALE_RELEASE_SEED=N for another series
RUNS = int(os.environ.get("FLASHSALE_RELEASE_RUNS", "16"))
SEED = int(os.environ.get("FLASHSALE_RELEASE_SEED", "20261201"))


def units(sale: dict[str, Any]) -> tuple[int, int, int]:
    return sale["available"], sale["fcode_available"], sale["fcode_released"]


async def code_state(service: Service, sale_id: str, code: str) -> tuple[str, str]:
    """The code's state in Redis (a/u/r) and in PostgreSQL."""
    digest = codes.digest(service.services.fcode_key, codes.normalize(code))
    engine = service.services.engine
    record = await engine.redis.hget(engine.keys.sale(sale_id).fcodes, digest)
    row = await service.services.pool.fetchval("SELECT state FROM fcodes WHERE digest = $1", digest)
    return str(record)[:1], str(row)


async def test_the_release_is_an_option_of_sales_with_fcode_units(service: Service) -> None:
    refused = [
        ({"fcode_release_at": at(30)}, "'fcode_stock'"),
        ({"fcode_stock": 2, "fcode_release_at": at(-10)}, "after the F-code lane opens"),
        ({"fcode_stock": 2, "fcode_opens_at": at(20), "fcode_release_at": at(10)}, "opens"),
        ({"fcode_stock": 2, "fcode_release_at": at(7200)}, "before 'ends_at'"),
        ({"fcode_stock": 2, "fcode_release_at": 1_900_000_000}, "epoch numbers"),
        ({"fcode_stock": 2, "fcode_release_at": "at noon"}, "ISO 8601"),
    ]
    for fields, why in refused:
        reply = await service.call(
            "POST", "/v1/admin/sales", json=_spec(**fields), headers=service.admin_headers
        )
        assert (reply.status, reply.body.get("error")) == (400, "invalid_request"), fields
        assert why in reply.body["message"], (fields, reply.body)
    plain = await service.create_sale(fcode_stock=2)
    assert "fcode_release_at" not in plain  # the view of a sale without one is as it was
    sale = await service.create_sale(fcode_stock=2, fcode_release_at="2040-01-01T00:00:00Z",
                                     ends_at="2040-01-02T00:00:00Z")  # fmt: skip
    assert (sale["fcode_release_at"], sale["fcode_released"]) == ("2040-01-01T00:00:00.000Z", 0)
    stored = await fetch_sale(service.services.pool, sale["sale_id"])
    assert stored is not None
    view = await service.services.engine.get_sale(sale["sale_id"])
    assert stored[0].fcode_release_ms == view.definition.fcode_release_ms == 2_208_988_800_000


def _spec(**fields: Any) -> dict[str, Any]:
    from tests.helpers import sale_spec

    return sale_spec(**fields)


async def test_unredeemed_units_pass_to_the_crowd_and_later_codes_are_refused(
    service: Service,
) -> None:
    sale = await service.create_sale(stock=10, fcode_stock=4, fcode_release_at=at(1.0))
    sale_id = sale["sale_id"]
    shown = await put_codes(service, sale_id, 4)
    assert (await service.buy(sale_id, "vip0", {"fcode": shown[0]})).status == 201
    assert units(await public_sale(service, sale_id)) == (6, 3, 0)

    async def released() -> bool:
        return bool((await public_sale(service, sale_id))["fcode_released"])

    await wait_for(released, timeout_s=5)  # the sweeper did it
    assert units(await public_sale(service, sale_id)) == (9, 0, 3)
    stats = await service.stats(sale_id)
    assert (stats["available"], stats["fcode_available"], stats["fcode_released"]) == (9, 0, 3)
    reply = await service.buy(sale_id, "vip1", {"fcode": shown[1]})
    assert (reply.status, reply.body["error"]) == (409, "fcode_lane_closed")
    assert "stays unused" in reply.body["message"]
    assert await code_state(service, sale_id, shown[1]) == ("a", "issued")
    issued = await service.call(
        "POST", f"/v1/admin/sales/{sale_id}/fcodes", json={"campaign": "late", "count": 1},
        headers=service.admin_headers,
    )  # fmt: skip
    assert (issued.status, issued.body["error"]) == (409, "fcode_lane_closed")  # no new codes
    # the crowd buys it out: the sale sells out, which it never did with the lane kept
    replies = await gather_limited(20, *(service.buy(sale_id, f"fan{i}") for i in range(12)))
    assert sorted(r.status for r in replies) == [201] * 9 + [409] * 3
    assert (await public_sale(service, sale_id))["status"] == "sold_out"
    await assert_reconciled(service, sale_id)


async def test_a_buy_makes_the_release_when_the_sweeper_has_not(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(run_sweeper=False)
    sale = await service.create_sale(stock=3, fcode_stock=2, fcode_release_at=at(0.8))
    sale_id = sale["sale_id"]
    shown = await put_codes(service, sale_id, 1)
    assert (await service.buy(sale_id, "u1")).status == 201
    reply = await service.buy(sale_id, "u2")
    assert (reply.status, reply.body["error"]) == (409, "sold_out")
    await asyncio.sleep(1.0)
    assert units(await public_sale(service, sale_id)) == (0, 2, 0)  # nobody has released yet
    assert (await service.buy(sale_id, "u2")).status == 201  # this buy released, then bought
    assert units(await public_sale(service, sale_id)) == (1, 0, 2)
    reply = await service.buy(sale_id, "vip", {"fcode": shown[0]})
    assert (reply.status, reply.body["error"]) == (409, "fcode_lane_closed")

    other = await service.create_sale(stock=3, fcode_stock=2, fcode_release_at=at(0.5))
    late_code = (await put_codes(service, other["sale_id"], 1))[0]
    await asyncio.sleep(0.7)
    # an F-code buy past the moment makes the release too, and is refused
    reply = await service.buy(other["sale_id"], "vip", {"fcode": late_code})
    assert (reply.status, reply.body["error"]) == (409, "fcode_lane_closed")
    assert units(await public_sale(service, other["sale_id"])) == (3, 0, 2)


async def test_a_release_missed_while_nothing_ran_is_made_on_the_next_pass_once(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(run_sweeper=False)
    sale = await service.create_sale(stock=5, fcode_stock=3, fcode_release_at=at(0.5))
    sale_id = sale["sale_id"]
    await asyncio.sleep(0.7)
    assert units(await public_sale(service, sale_id)) == (2, 3, 0)
    sweeper = Sweeper(service.services.engine)
    await sweeper.sweep_once()
    assert units(await public_sale(service, sale_id)) == (5, 0, 3)
    for _ in range(3):
        await sweeper.sweep_once()
    assert units(await public_sale(service, sale_id)) == (5, 0, 3)
    keys = Keyspace(service.settings.key_prefix).sale(sale_id)
    assert await service.services.engine.redis.hget(keys.sale, "fc_lane") == "closed"


async def test_fcode_units_given_back_after_the_release_go_to_the_public_lane(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(run_sweeper=False)
    released_at = time.monotonic() + 2.5  # room for the three buys on a busy machine
    sale = await service.create_sale(
        stock=6, fcode_stock=3, reservation_ttl_s=4, fcode_release_at=at(2.5)
    )
    sale_id = sale["sale_id"]
    shown = await put_codes(service, sale_id, 3)
    orders = []
    for i, code in enumerate(shown):
        reply = await service.buy(sale_id, f"vip{i}", {"fcode": code})
        assert reply.status == 201, reply.body
        orders.append(reply.body["order"]["order_id"])
    deadline = time.monotonic() + 4  # of the last reservation, at the latest
    await sleep_until(released_at)
    sweeper = Sweeper(service.services.engine)
    await sweeper.sweep_once()  # the release: nothing unredeemed to move
    assert units(await public_sale(service, sale_id)) == (3, 0, 0)
    # a cancel
    assert (await service.order_action(orders[0], "vip0", "cancel")).status == 200
    assert units(await public_sale(service, sale_id)) == (4, 0, 1)
    reply = await service.buy(sale_id, "vip0", {"fcode": shown[0]})  # usable again, but where?
    assert (reply.status, reply.body["error"]) == (409, "fcode_lane_closed")
    assert await code_state(service, sale_id, shown[0]) == ("a", "issued")
    await sleep_until(deadline)  # the other two reservations are past their deadline
    # a payment that comes late expires its order first (pay.lua), as the sweeper would
    paid = await service.pay(orders[1])
    assert paid.body["payment"]["reason"] == "reservation_expired", paid.body
    assert units(await public_sale(service, sale_id)) == (5, 0, 2)
    await sweeper.sweep_once()  # the last one expires in the sweeper
    assert units(await public_sale(service, sale_id)) == (6, 0, 3)
    stats = await service.stats(sale_id)
    assert (stats["reserved"], stats["expired"], stats["cancelled"]) == (0, 2, 1)
    await assert_reconciled(service, sale_id)


async def test_a_booking_queue_admits_shoppers_for_released_units(service: Service) -> None:
    sale_id, opens_at = await queued_sale(
        service, stock=4, fcode_stock=2, admission_window_s=30, fcode_release_at=at(2.5)
    )
    users = [f"b{i}" for i in range(6)]
    for user in users:
        assert (await book(service, sale_id, user)).status == 201
    await sleep_until(opens_at)
    assert (await public_sale(service, sale_id))["admitted"] == 2
    for user in users[:2]:
        assert (await service.buy(sale_id, user)).status == 201
    reply = await service.buy(sale_id, "b2")
    assert (reply.status, reply.body["position"]) == (202, 0)

    async def admitted(n: int) -> bool:
        return bool((await public_sale(service, sale_id))["admitted"] >= n)

    await wait_for(lambda: admitted(4), timeout_s=5)  # one place for each released unit
    assert (await public_sale(service, sale_id))["admitted"] == 4
    for user in users[2:4]:
        assert (await service.buy(sale_id, user)).status == 201
    reply = await service.buy(sale_id, "b4")
    assert (reply.status, reply.body["position"]) == (202, 0)
    assert units(await public_sale(service, sale_id)) == (0, 0, 2)


async def test_an_opening_queue_admits_tickets_for_released_units(service: Service) -> None:
    sale = await service.create_sale(
        stock=3, fcode_stock=1, starts_at=at(0), opening_window_ms=1000, admission_window_s=30,
        fcode_release_at=at(2.5),
    )  # fmt: skip
    sale_id = sale["sale_id"]
    users = [f"t{i}" for i in range(4)]
    for user in users:
        assert (await service.buy(sale_id, user)).status == 202
    await asyncio.sleep(1.2)  # the draw: two places for the two public units
    answers = {u: await service.buy(sale_id, u) for u in users}
    bought = [u for u, r in answers.items() if r.status == 201]
    assert len(bought) == 2, {u: r.body for u, r in answers.items()}
    waiting = sorted((r.body["position"], u) for u, r in answers.items() if r.status == 202)
    assert [p for p, _ in waiting] == [0, 1]

    async def admitted() -> bool:
        return bool((await public_sale(service, sale_id))["admitted"] >= 3)

    await wait_for(admitted, timeout_s=5)
    assert (await service.buy(sale_id, waiting[0][1])).status == 201
    assert (await service.buy(sale_id, waiting[1][1])).body["position"] == 0
    assert units(await public_sale(service, sale_id)) == (0, 0, 1)


async def test_the_release_racing_fcode_buys_cancels_and_expiries(
    make_service: ServiceFactory,
) -> None:
    """Seeded scenarios side by side, each its own sale: F-code holders buy and cancel, the
    crowd buys, reservations expire, and many sweepers run admit.lua while the moment passes.
    Never oversold, released once, every F-code unit accounted for, reconcile clean.

    The service's own sweeper is off: run every 0.25 s over all these sales, on a busy machine
    it made every release itself and the buys' and admit.lua's race was never run. Each
    scenario expires its reservations itself instead (expire.lua only)."""
    service = await make_service(run_sweeper=False)
    results = await asyncio.gather(*(_race(service, SEED + run) for run in range(RUNS)))
    assert sum(r["fcode_buys_refused"] for r in results) > 0  # the lane did close mid-run
    assert sum(r["fcode_bought"] for r in results) > 0
    assert sum(r["released_by_admit"] for r in results) > 0


async def _race(service: Service, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    engine = service.services.engine
    stock = rng.randint(4, 16)
    fcode_stock = rng.randint(1, stock)
    release_in = rng.uniform(0.4, 0.9)
    sale = await service.create_sale(
        stock=stock, fcode_stock=fcode_stock, per_user_limit=1, reservation_ttl_s=1,
        fcode_release_at=at(release_in), rate_per_user=0,
    )  # fmt: skip
    sale_id = sale["sale_id"]
    keys = engine.keys.sale(sale_id)
    started = time.monotonic()
    shown = await put_codes(service, sale_id, fcode_stock + 2)
    seen = {"fcode_bought": 0, "fcode_buys_refused": 0, "released_by_admit": 0}

    async def at_time(s: float) -> None:
        await asyncio.sleep(max(0.0, started + s - time.monotonic()))

    async def vip(i: int, code: str) -> None:
        await at_time(rng.uniform(0, release_in + 0.3))
        reply = await service.buy(sale_id, f"vip{i}", {"fcode": code})
        if reply.status == 201:
            seen["fcode_bought"] += 1
            roll = rng.random()
            if roll < 0.3:
                await at_time(rng.uniform(0, release_in + 0.5))
                await service.order_action(reply.body["order"]["order_id"], f"vip{i}", "cancel")
            elif roll < 0.6:
                await service.pay(reply.body["order"]["order_id"])
            # else: left to expire, before or after the release
        elif reply.body.get("error") == "fcode_lane_closed":
            seen["fcode_buys_refused"] += 1
        else:
            assert reply.body.get("error") == "sold_out", reply.body

    async def fan(i: int) -> None:
        await at_time(rng.uniform(0, release_in + 0.5))
        reply = await service.buy(sale_id, f"fan{i}")
        assert reply.status in (201, 409), reply.body
        if reply.status == 201 and rng.random() < 0.3:
            await service.order_action(reply.body["order"]["order_id"], f"fan{i}", "cancel")

    async def sweeper() -> None:  # admit.lua as many sweepers would run it
        await at_time(release_in - 0.05 + rng.uniform(0, 0.1))
        result = await engine.scripts.admit(
            engine.redis, [keys.sale, keys.waves, keys.queue_bits, keys.deadlines], []
        )
        if int(result[3]) >= 0:
            seen["released_by_admit"] += 1

    async def expire_due() -> bool:  # what the service's sweeper does first: expire.lua
        seconds, micros = await engine.redis.time()
        await engine.expire_due(sale_id, seconds * 1000 + micros // 1000, 500)
        return await _settled(service, sale_id)

    async def expirer() -> None:
        while time.monotonic() < started + release_in + 1.0:
            await expire_due()
            await asyncio.sleep(0.1)

    async def watch() -> None:  # the units add up at every moment
        while time.monotonic() < started + release_in + 1.0:
            c = await engine.redis.hmget(
                keys.sale, ["available", "fcode_available", "reserved", "paid"]
            )
            a, f, r, p = (int(x) for x in c)
            assert a + f + r + p == stock, (seed, a, f, r, p)
            assert min(a, f, r, p) >= 0, (seed, a, f, r, p)
            await asyncio.sleep(0.01)

    await asyncio.gather(
        *(vip(i, c) for i, c in enumerate(shown)),
        *(fan(i) for i in range(stock + 4)),
        *(sweeper() for _ in range(8)),
        expirer(),
        watch(),
    )
    assert seen["released_by_admit"] <= 1, (seed, seen)  # and only when no buy came first
    await asyncio.sleep(1.3)  # every reservation left is past its deadline
    await wait_for(expire_due, timeout_s=10)
    f = await engine.redis.hgetall(keys.sale)
    fcode_held = int(
        await service.services.pool.fetchval(
            "SELECT coalesce(sum(quantity), 0) FROM orders WHERE sale_id = $1 "
            "AND fcode IS NOT NULL AND status = 'paid'",
            sale_id,
        )
    )
    assert f["fc_lane"] == "closed", seed
    assert int(f["fcode_available"]) == 0, seed
    # every F-code unit not held by a paid F-code order passed to the crowd, once
    assert int(f["fcode_released"]) == fcode_stock - fcode_held, (seed, f)
    assert int(f["available"]) + int(f["paid"]) == stock, (seed, f)
    await assert_reconciled(service, sale_id)
    return seen


async def _settled(service: Service, sale_id: str) -> bool:
    return int(await service.services.engine.redis.hget(
        service.services.engine.keys.sale(sale_id).sale, "reserved"
    )) == 0  # fmt: skip
