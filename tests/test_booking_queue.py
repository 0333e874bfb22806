"""The booking queue: dense numbers, admission in order, places that pass on, and honest
positions. Real Redis and PostgreSQL; sales open a second or two from now."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from redis.asyncio import Redis

from flashsale.engine.keys import Keyspace
from tests.booking_helpers import at, book, me, public_sale, queued_sale, sleep_until, wait_for
from tests.helpers import Service, gather_limited


async def test_numbers_are_dense_unique_and_repeats_keep_theirs(
    service: Service, pg: asyncpg.Pool
) -> None:
    sale_id, _ = await queued_sale(service, opens_in_s=120)
    users = [f"crowd-{i}" for i in range(2500)]
    # every shopper books twice at once: exactly one of the two is the booking, the other a repeat
    replies = await gather_limited(200, *(book(service, sale_id, u) for u in users + users))
    first, second = replies[: len(users)], replies[len(users) :]
    numbers = {}
    for user, a, b in zip(users, first, second, strict=True):
        assert sorted([a.status, b.status]) == [200, 201], (a.body, b.body)
        assert a.body["booking"]["booking_no"] == b.body["booking"]["booking_no"]
        numbers[user] = a.body["booking"]["booking_no"]
    assert sorted(numbers.values()) == list(range(1, len(users) + 1))
    # numbers follow arrival: the booking times grow with the numbers
    booked = sorted(
        (r.body["booking"]["booking_no"], r.body["booking"]["booked_at"])
        for r in replies
        if r.status == 201
    )
    assert [t for _, t in booked] == sorted(t for _, t in booked)
    assert (await public_sale(service, sale_id))["bookings"] == len(users)

    async def all_in_postgres() -> bool:
        n = await pg.fetchval("SELECT count(*) FROM bookings WHERE sale_id = $1", sale_id)
        return bool(n == len(users))

    await wait_for(all_in_postgres)
    rows = await pg.fetch(
        "SELECT user_id, booking_no, source FROM bookings WHERE sale_id = $1", sale_id
    )
    assert {r["user_id"]: r["booking_no"] for r in rows} == numbers
    assert {r["source"] for r in rows} == {"web"}
    stats = await service.stats(sale_id)
    assert (stats["bookings"], stats["bookings_in_postgres"]) == (2500, 2500)
    assert (stats["admitted"], stats["waiting"]) == (0, 2500)  # admission starts with the sale


async def test_booking_window_capacity_and_refusals(service: Service) -> None:
    plain = (await service.create_sale())["sale_id"]
    reply = await book(service, plain, "ann")
    assert (reply.status, reply.body["error"]) == (409, "booking_not_offered")

    later = (await service.create_sale(booking_opens_at=at(60), booking_closes_at=at(120)))[
        "sale_id"
    ]
    reply = await book(service, later, "ann")
    assert (reply.status, reply.body["error"]) == (409, "booking_not_open")

    over = (await service.create_sale(booking_opens_at=at(-60), booking_closes_at=at(-30)))[
        "sale_id"
    ]
    reply = await book(service, over, "ann")
    assert (reply.status, reply.body["error"]) == (409, "booking_closed")

    small, _ = await queued_sale(service, opens_in_s=60, booking_capacity=3)
    assert [(await book(service, small, u)).status for u in ("a", "b", "c")] == [201] * 3
    reply = await book(service, small, "d")
    assert (reply.status, reply.body["error"]) == (409, "booking_full")
    assert (await book(service, small, "a")).status == 200  # a repeat is not a new place
    assert (await public_sale(service, small))["bookings"] == 3

    reply = await service.call(
        "POST", f"/v1/sales/{small}/bookings", json={"booking_no": 1}, headers=service.auth("e")
    )
    assert (reply.status, reply.body["error"]) == (400, "invalid_request")
    reply = await service.call("POST", f"/v1/sales/{small}/bookings")
    assert reply.status == 401
    reply = await book(service, "no-such-sale", "a")
    assert (reply.status, reply.body["error"]) == (404, "sale_not_found")
    reply = await service.call("GET", f"/v1/sales/{small}/bookings/me", headers=service.auth("d"))
    assert (reply.status, reply.body["error"]) == (404, "booking_not_found")

    closing = (await service.create_sale(booking_opens_at=at(-60), booking_closes_at=at(60)))[
        "sale_id"
    ]
    await service.call("POST", f"/v1/admin/sales/{closing}/close", headers=service.admin_headers)
    reply = await book(service, closing, "ann")
    assert (reply.status, reply.body["error"]) == (409, "booking_closed")


async def test_arrival_lets_only_booked_shoppers_buy(service: Service, redis: Redis) -> None:
    sale_id, opens_at = await queued_sale(service, admission="arrival", stock=5)
    for user in ("ann", "bob"):
        assert (await book(service, sale_id, user)).status == 201
    assert (await me(service, sale_id, "ann"))["state"] == "waiting"
    await sleep_until(opens_at)

    reply = await service.buy(sale_id, "stranger")
    assert (reply.status, reply.body["error"]) == (403, "booking_required")
    assert (await me(service, sale_id, "ann"))["state"] == "admitted"
    assert (await service.buy(sale_id, "ann")).status == 201
    assert (await me(service, sale_id, "ann"))["state"] == "purchased"
    stats = await service.stats(sale_id)
    assert (stats["reserved"], stats["available"]) == (1, 4)
    holders = await redis.hgetall(Keyspace(service.settings.key_prefix).sale(sale_id).holders)
    assert holders == {"ann": "1"}


async def test_units_not_bought_in_time_pass_to_the_next_in_line(service: Service) -> None:
    sale_id, opens_at = await queued_sale(service, stock=3)
    users = [f"u{i}" for i in range(8)]  # booking numbers 1..8, in this order
    for user in users:
        assert (await book(service, sale_id, user)).status == 201
    await sleep_until(opens_at)

    # ranks 1..3 are admitted at the opening; 4 is next
    reply = await service.buy(sale_id, "u3")
    assert reply.status == 202
    assert reply.body["status"] == "queued"
    assert (reply.body["position"], reply.body["booking_no"]) == (0, 4)
    assert (await service.buy(sale_id, "u7")).body["position"] == 4
    assert (await service.buy(sale_id, "u0")).status == 201
    bought = await service.buy(sale_id, "u2")
    assert bought.status == 201
    order_id = bought.body["order"]["order_id"]
    assert (await service.order_action(order_id, "u2", "cancel")).status == 200
    assert (await me(service, sale_id, "u2"))["state"] == "admitted"  # may buy again, in time
    assert (await me(service, sale_id, "u1"))["state"] == "admitted"

    # the opening windows close: u1 never bought, u2 let go -> two places for ranks 4 and 5
    await wait_for(lambda: _admitted(service, sale_id, 5))
    for user in ("u1", "u2"):
        assert (await me(service, sale_id, user))["state"] == "passed"
        reply = await service.buy(sale_id, user)
        assert (reply.status, reply.body["error"]) == (409, "admission_passed")
    assert (await me(service, sale_id, "u0"))["state"] == "purchased"
    assert (await me(service, sale_id, "u4"))["state"] == "admitted"
    assert (await service.buy(sale_id, "u3")).status == 201
    assert (await service.buy(sale_id, "u5")).body["position"] == 0

    # a buyer letting go after their window closed hands the place on at once
    first = await service.call("GET", "/v1/orders/" + await _order_of(service, sale_id, "u0"),
                               headers=service.auth("u0"))  # fmt: skip
    assert (
        await service.order_action(first.body["order"]["order_id"], "u0", "cancel")
    ).status == 200
    await wait_for(lambda: _admitted(service, sale_id, 6))
    stats = await service.stats(sale_id)
    assert (stats["admitted"], stats["waiting"]) == (6, 2)
    assert (await me(service, sale_id, "u0"))["state"] == "passed"
    assert (await service.buy(sale_id, "u5")).status == 201


async def _admitted(service: Service, sale_id: str, n: int) -> bool:
    return bool((await public_sale(service, sale_id))["admitted"] >= n)


async def _order_of(service: Service, sale_id: str, user: str) -> str:
    row = await service.services.pool.fetchrow(
        "SELECT order_id FROM orders WHERE sale_id = $1 AND user_id = $2 AND status = 'reserved'",
        sale_id, user,
    )  # fmt: skip
    if row is None:  # the writer has not carried it yet: ask Redis through a repeat buy
        await asyncio.sleep(0.3)
        return await _order_of(service, sale_id, user)
    order_id: str = row["order_id"]
    return order_id


async def test_booking_order_never_admits_n_plus_1_before_n(service: Service) -> None:
    sale_id, opens_at = await queued_sale(service, stock=4)
    users = [f"q{i:02d}" for i in range(30)]
    for user in users:
        await book(service, user=user, sale_id=sale_id)
    await sleep_until(opens_at)
    buyers = set(users[::5])  # the others let their window pass
    decided: set[str] = set()
    snapshots = 0
    deadline = time.monotonic() + 4.5
    while time.monotonic() < deadline:
        # read from the back of the queue to the front: admission only ever moves forward, so
        # if rank n+1 is seen admitted, rank n must be seen admitted too
        states = {}
        for user in reversed(users):
            states[user] = (await me(service, sale_id, user))["state"]
        ranks = [states[u] != "waiting" for u in users]
        assert ranks == sorted(ranks, reverse=True), states
        snapshots += 1
        for user in users:
            if states[user] == "admitted" and user not in decided:
                decided.add(user)
                if user in buyers:
                    reply = await service.buy(sale_id, user)
                    assert reply.status == 201, reply.body
    waves = await service.services.engine.redis.zrange(
        Keyspace(service.settings.key_prefix).sale(sale_id).waves, 0, -1, withscores=True
    )
    firsts = [int(score) for _, score in waves]
    assert firsts[0] == 1
    assert firsts == sorted(firsts)
    assert len(firsts) >= 3, waves
    assert snapshots >= 5


async def test_nobody_outside_the_admitted_set_can_reserve(service: Service) -> None:
    # 200 bookings one after another (their order is the queue's) take longer than the usual
    # 1.5 s before the opening on a busy machine (the suite runs on two workers)
    sale_id, opens_at = await queued_sale(service, opens_in_s=3.0, stock=20, per_user_limit=2)
    users = [f"b{i:03d}" for i in range(200)]
    for user in users:
        assert (await book(service, sale_id, user)).status == 201
    await sleep_until(opens_at)
    replies = await gather_limited(100, *(service.buy(sale_id, u) for u in users))
    winners = [u for u, r in zip(users, replies, strict=True) if r.status == 201]
    assert winners == users[:20]
    for rank, reply in enumerate(replies, start=1):
        if rank > 20:
            assert reply.status == 202, reply.body
            assert reply.body["position"] == rank - 21
    holders = await service.services.engine.redis.hgetall(
        Keyspace(service.settings.key_prefix).sale(sale_id).holders
    )
    assert sorted(holders) == users[:20]


async def test_positions_and_estimates_move_as_the_queue_moves(service: Service) -> None:
    sale_id, opens_at = await queued_sale(service, stock=2)
    users = [f"p{i}" for i in range(9)]
    for user in users:
        await book(service, sale_id, user)
    before = await me(service, sale_id, "p8")
    assert (before["state"], before["position"], before["wait_is_lower_bound"]) == (
        "waiting", 6, True,
    )  # fmt: skip
    await sleep_until(opens_at)
    seen = []
    while (status := await me(service, sale_id, "p8"))["state"] == "waiting":
        if not seen or seen[-1][0] != status["position"]:
            seen.append((status["position"], status["estimated_wait_s"],
                         status["wait_is_lower_bound"]))  # fmt: skip
        await asyncio.sleep(0.05)
    assert status["state"] == "admitted"
    positions = [p for p, _, _ in seen]
    assert positions == sorted(positions, reverse=True), seen
    assert len(positions) >= 3, seen
    assert positions[0] == 6
    # the first estimate can only be a lower bound (nothing admitted yet but the opening);
    # once places have passed on, the estimate comes from the measured admission rate
    assert seen[0][2] is True
    assert any(lower is False for _, _, lower in seen[1:]), seen
    assert all(wait is not None and wait >= 0 for _, wait, _ in seen)


async def test_a_reservation_released_after_the_window_frees_one_place_once(
    service: Service,
) -> None:
    sale_id, opens_at = await queued_sale(service, stock=1, reservation_ttl_s=1)
    for user in ("r1", "r2", "r3"):
        await book(service, sale_id, user)
    await sleep_until(opens_at)
    assert (await service.buy(sale_id, "r1")).status == 201
    # the window and the reservation end about together: either way one place passes on, once
    await wait_for(lambda: _admitted(service, sale_id, 2))
    assert (await public_sale(service, sale_id))["admitted"] == 2
    await asyncio.sleep(0.5)  # r2's window is still open: nothing else may have freed a place
    assert (await public_sale(service, sale_id))["admitted"] == 2
    assert (await public_sale(service, sale_id))["available"] == 1
    await wait_for(lambda: _admitted(service, sale_id, 3))  # r2 lets the window pass
    assert (await service.buy(sale_id, "r3")).status == 201
    # the whole queue has been admitted: r1 and r2 may try again for any unit that comes back
    assert (await me(service, sale_id, "r1"))["state"] == "admitted"
    assert (await me(service, sale_id, "r2"))["state"] == "admitted"


async def test_unbooked_shoppers_come_after_every_booked_one(service: Service) -> None:
    sale_id, opens_at = await queued_sale(service, stock=2, booking_required=False)
    for user in ("k1", "k2", "k3"):
        await book(service, sale_id, user)
    await sleep_until(opens_at)
    reply = await service.buy(sale_id, "walk-in")
    assert reply.status == 202
    assert (reply.body["position"], reply.body["booking_no"]) == (1, None)
    # nobody buys: the opening places pass on, the whole queue is admitted, and then anyone
    await wait_for(lambda: _admitted(service, sale_id, 3))
    reply = await service.buy(sale_id, "walk-in")
    assert reply.status == 201, reply.body


async def test_fcode_holders_skip_the_queue(service: Service) -> None:
    sale_id, opens_at = await queued_sale(service, stock=3, fcode_stock=1)
    issued = await service.call(
        "POST", f"/v1/admin/sales/{sale_id}/fcodes",
        json={"campaign": "vip", "count": 1}, headers=service.admin_headers,
    )  # fmt: skip
    assert issued.status == 201, issued.body
    code = issued.body["codes"][0]["code"]
    await book(service, sale_id, "fan")
    await sleep_until(opens_at)
    reply = await service.buy(sale_id, "not-booked", {"fcode": code})
    assert reply.status == 201, reply.body
    reply = await service.buy(sale_id, "not-booked-either")
    assert (reply.status, reply.body["error"]) == (403, "booking_required")


async def test_sale_booking_fields_are_checked(service: Service) -> None:
    base = {"booking_opens_at": at(-60), "booking_closes_at": at(60), "starts_at": at(120)}
    refused = [
        {"booking_closes_at": at(-61)},  # closes before it opens
        {"admission": "first_come"},
        {"admission": 1},
        {"admission": "booking_order", "booking_closes_at": at(180)},  # queue open after start
        {"admission_ratio": 2.0},  # only for a queued admission
        {"admission": "booking_order", "admission_ratio": 0},
        {"admission": "booking_order", "admission_ratio": True},
        {"admission": "booking_order", "admission_window_s": 0},
        {"lottery_seed": "abc"},  # only for a lottery
        {"booking_required": "yes"},
        {"booking_capacity": 0},
        {"booking_opens_at": None},
        {"booking_required": True, "booking_opens_at": None, "booking_closes_at": None},
    ]
    for fields in refused:
        spec = {**base, **fields}
        spec = {k: v for k, v in spec.items() if v is not None}
        reply = await service.call(
            "POST", "/v1/admin/sales", json=_spec(**spec), headers=service.admin_headers
        )
        assert (reply.status, reply.body.get("error")) == (400, "invalid_request"), (
            fields, reply.body,
        )  # fmt: skip


def _spec(**fields: object) -> dict[str, object]:
    from tests.helpers import sale_spec

    return sale_spec(**fields)


async def test_a_pause_stops_the_admission_windows(service: Service) -> None:
    sale_id, opens_at = await queued_sale(service, stock=2, admission_window_s=2)
    for user in ("w1", "w2", "w3", "w4"):
        await book(service, sale_id, user)
    await sleep_until(opens_at)
    admin = service.admin_headers
    assert (
        await service.call("POST", f"/v1/admin/sales/{sale_id}/pause", headers=admin)
    ).status == 200
    reply = await service.buy(sale_id, "w1")
    assert (reply.status, reply.body["error"]) == (409, "sale_paused")
    await asyncio.sleep(2.5)  # the opening windows would have closed by now
    assert (await public_sale(service, sale_id))["admitted"] == 2  # nothing moved while paused
    assert (
        await service.call("POST", f"/v1/admin/sales/{sale_id}/resume", headers=admin)
    ).status == 200
    status = await me(service, sale_id, "w2")
    assert status["state"] == "admitted", status
    assert (await service.buy(sale_id, "w1")).status == 201
    await asyncio.sleep(0.3)
    assert (await public_sale(service, sale_id))["admitted"] == 2
    # the windows close about two seconds after the resume: w2's place passes to w3
    await wait_for(lambda: _admitted(service, sale_id, 3))
    assert (await me(service, sale_id, "w2"))["state"] == "passed"


async def test_once_the_whole_queue_is_admitted_what_is_left_is_for_every_booked_shopper(
    service: Service,
) -> None:
    sale_id, opens_at = await queued_sale(service, stock=3)
    for user in ("e1", "e2", "e3", "e4"):
        await book(service, sale_id, user)
    await sleep_until(opens_at)
    # nobody buys: the opening windows pass, e4 is admitted, and then nobody is waiting
    await wait_for(lambda: _admitted(service, sale_id, 4))
    status = await me(service, sale_id, "e1")
    assert status["state"] == "admitted", status
    assert (await service.buy(sale_id, "e1")).status == 201
    assert (await me(service, sale_id, "e1"))["state"] == "purchased"
    reply = await service.buy(sale_id, "stranger")
    assert (reply.status, reply.body["error"]) == (403, "booking_required")
