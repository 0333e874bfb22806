"""The opening window: tickets instead of units around the opening, one per shopper; a seeded
draw at the window's close that anyone can check; admission in ticket order; later arrivals at
the end in arrival order. Real Redis and PostgreSQL; windows of a second or two."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from flashsale.booking import lottery
from flashsale.engine.keys import Keyspace, booking_slot
from flashsale.http.openapi import openapi_spec
from flashsale.opening import shuffle
from tests.booking_helpers import at, book, me, public_sale, wait_for
from tests.helpers import Reply, Service, assert_reconciled, gather_limited, run_flashsale


async def window_sale(
    service: Service, *, draw_in_s: float = 1.5, window_ms: int = 1500, **fields: Any
) -> tuple[str, float]:
    """A sale whose opening window (``window_ms`` either side of the start) is open now and
    closes ``draw_in_s`` from now; (sale id, monotonic time of the draw)."""
    draw_at = time.monotonic() + draw_in_s
    sale = await service.create_sale(
        starts_at=at(draw_in_s - window_ms / 1000), opening_window_ms=window_ms, **fields
    )
    return sale["sale_id"], draw_at


async def after(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()) + 0.05)


def rank_of(seed: str, window_tickets: int, ticket: int) -> int:
    return shuffle.rank(seed, window_tickets, ticket)


async def tickets_of(service: Service, sale_id: str, users: list[str]) -> dict[str, int]:
    replies = await gather_limited(50, *(service.buy(sale_id, u) for u in users))
    tickets = {}
    for user, reply in zip(users, replies, strict=True):
        assert reply.status == 202, (user, reply.body)
        tickets[user] = reply.body["ticket"]
    return tickets


async def opening(service: Service, sale_id: str) -> Reply:
    return await service.call("GET", f"/v1/sales/{sale_id}/opening")


# -- the option -----------------------------------------------------------------------------


async def test_the_window_is_an_option_of_arrival_sales_only(service: Service) -> None:
    base = {"starts_at": at(60), "ends_at": at(3600)}
    booking = {"booking_opens_at": at(-60), "booking_closes_at": at(30)}
    refused = [
        ({"opening_window_ms": -1}, "between 0 and 3600000"),
        ({"opening_window_ms": 3_600_001}, "between 0 and 3600000"),
        ({"opening_window_ms": "1000"}, "must be an integer"),
        ({"opening_window_ms": True}, "must be an integer"),
        ({"opening_window_ms": 1.5}, "must be an integer"),
        ({"opening_window_ms": 1000, "admission": "booking_order", **booking}, "already in an"),
        ({"opening_window_ms": 1000, "admission": "lottery", **booking}, "already in an"),
        ({"opening_window_ms": 3_600_000, "ends_at": at(61)}, "before 'ends_at'"),
        ({"opening_seed": "abc"}, "only with an 'opening_window_ms'"),
        ({"opening_window_ms": 1000, "opening_seed": ""}, "non-empty"),
        ({"opening_window_ms": 1000, "opening_seed": "a\nb"}, "control characters"),
        ({"opening_window_ms": 1000, "admission_window_s": 0}, "admission_window_s"),
        ({"opening_window_ms": 1000, "admission_ratio": 0}, "admission_ratio"),
        ({"admission_window_s": 10}, "booking_opens_at"),  # without a window: a booking field
    ]
    for fields, why in refused:
        reply = await service.call(
            "POST", "/v1/admin/sales", json=_spec(**{**base, **fields}),
            headers=service.admin_headers,
        )  # fmt: skip
        assert (reply.status, reply.body.get("error")) == (400, "invalid_request"), fields
        assert why in reply.body["message"], (fields, reply.body)

    plain = await service.create_sale(**base)
    assert "opening_window_ms" not in plain  # the view of a sale without one is as it was
    assert "opening_seed_sha256" not in plain
    windowed = await service.create_sale(
        **base, opening_window_ms=30_000, admission_window_s=45, admission_ratio=2.0,
        **booking, admission="arrival",
    )  # fmt: skip
    assert windowed["opening_window_ms"] == 30_000
    starts, opens = (
        datetime.fromisoformat(windowed[k].replace("Z", "+00:00"))
        for k in ("starts_at", "queue_opens_at")
    )
    assert (starts - opens).total_seconds() == 30
    assert windowed["opening_draw_at"] == _iso(starts.timestamp() + 30)
    assert windowed["opening_method"] == shuffle.METHOD
    assert windowed["opening_seed"] is None  # secret until the draw
    assert len(windowed["opening_seed_sha256"]) == 64
    assert (windowed["admission_window_s"], windowed["admission_ratio"]) == (45, 2.0)
    assert windowed["admission"] == "arrival"
    row = await service.services.pool.fetchrow(
        "SELECT opening_window_ms, opening_seed, admission_ratio, admission_window_s, "
        "fcode_release_at FROM sales WHERE sale_id = $1",
        windowed["sale_id"],
    )
    assert (row["opening_window_ms"], row["admission_ratio"], row["admission_window_s"]) == (
        30_000, 2.0, 45,
    )  # fmt: skip
    assert (
        hashlib.sha256(row["opening_seed"].encode()).hexdigest()
        == (windowed["opening_seed_sha256"])
    )
    assert row["fcode_release_at"] is None
    # PostgreSQL gives back what Redis was armed with
    from flashsale.store.sales import fetch_sale

    stored = await fetch_sale(service.services.pool, windowed["sale_id"])
    assert stored is not None
    view = await service.services.engine.get_sale(windowed["sale_id"])
    assert stored[0].opening == view.definition.opening
    assert stored[0].booking == view.definition.booking
    assert stored[0].opening is not None
    assert stored[0].opening.seed == row["opening_seed"]


def _iso(epoch_s: float) -> str:
    return (
        datetime.fromtimestamp(epoch_s, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _spec(**fields: Any) -> dict[str, Any]:
    from tests.helpers import sale_spec

    return sale_spec(**fields)


async def test_before_the_queue_opens_the_sale_is_not_open(service: Service) -> None:
    sale = await service.create_sale(starts_at=at(60), opening_window_ms=5_000)
    reply = await service.buy(sale["sale_id"], "early-bird")
    assert (reply.status, reply.body["error"]) == (409, "sale_not_open")
    assert (await public_sale(service, sale["sale_id"]))["tickets"] == 0


# -- tickets --------------------------------------------------------------------------------


async def test_one_ticket_per_shopper_however_many_requests_and_devices(
    service: Service,
) -> None:
    sale_id, _ = await window_sale(service, draw_in_s=30, window_ms=30_000, stock=5)
    users = [f"t{i:02d}" for i in range(30)]

    async def hammer(user: str) -> list[Reply]:
        phone, laptop = service.auth(user, ttl_s=3600), service.auth(user, ttl_s=1800)
        calls = [
            service.call("POST", f"/v1/sales/{sale_id}/buy", json={}, headers=h)
            for h in (phone, laptop, phone, laptop)
        ]
        return list(await asyncio.gather(*calls))

    replies = await gather_limited(30, *(hammer(u) for u in users))
    tickets = {}
    for user, answers in zip(users, replies, strict=True):
        assert {r.status for r in answers} == {202}, [r.body for r in answers]
        numbers = {r.body["ticket"] for r in answers}
        assert len(numbers) == 1, (user, numbers)  # one place, whichever device asks
        tickets[user] = numbers.pop()
        for r in answers:
            assert r.body["status"] == "queued"
            assert r.body["position"] is None  # nobody's place is known before the draw
            assert r.body["wait_is_lower_bound"] is True
            assert 1 <= int(r.headers["Retry-After"]) <= 30
    assert sorted(tickets.values()) == list(range(1, 31))
    stats = await service.stats(sale_id)
    assert (stats["tickets"], stats["reserved"], stats["available"]) == (30, 0, 5)
    assert (stats["admitted"], stats["waiting"]) == (0, 30)
    # stored as bookings are: one field per user digest, in the user's bucket
    keys = Keyspace(service.settings.key_prefix).sale(sale_id)
    bucket, field = booking_slot("t07")
    raw = await service.services.engine.redis.execute_command(
        "HGET", keys.ticket_bucket(bucket), field
    )
    assert int(raw) == tickets["t07"]


async def test_the_seeded_draw_orders_the_window_and_anyone_can_check_it(
    service: Service, tmp_path: Path
) -> None:
    seed = "opening-seed-2026"
    sale_id, draw_at = await window_sale(service, stock=5, opening_seed=seed)
    users = [f"d{i:02d}" for i in range(40)]
    tickets = await tickets_of(service, sale_id, users)
    before = await opening(service, sale_id)
    assert (before.status, before.body["error"]) == (409, "opening_not_drawn")
    assert int(before.headers["Retry-After"]) >= 1
    sale = await public_sale(service, sale_id)
    assert sale["opening_seed"] is None
    assert sale["opening_seed_sha256"] == hashlib.sha256(seed.encode()).hexdigest()

    await after(draw_at)
    assert (await public_sale(service, sale_id))["opening_seed"] == seed
    replies = await gather_limited(40, *(service.buy(sale_id, u) for u in users))
    ranks = {u: rank_of(seed, 40, tickets[u]) for u in users}
    assert sorted(ranks.values()) == list(range(1, 41))  # a permutation of the tickets
    for user, reply in zip(users, replies, strict=True):
        if ranks[user] <= 5:
            assert reply.status == 201, (user, ranks[user], reply.body)
        else:
            assert reply.status == 202, (user, ranks[user], reply.body)
            assert reply.body["ticket"] == tickets[user]
            assert reply.body["position"] == ranks[user] - 6

    published = await opening(service, sale_id)
    assert published.status == 200, published.body
    draw = published.body["opening"]
    assert (draw["method"], draw["seed"], draw["window_tickets"], draw["tickets"]) == (
        shuffle.METHOD, seed, 40, 40,
    )  # fmt: skip
    assert draw["seed_sha256"] == hashlib.sha256(seed.encode()).hexdigest()
    by_rank = sorted(users, key=ranks.__getitem__)
    lines = "".join(f"{ranks[u]},{tickets[u]},{booking_slot(u)[1].hex()}\n" for u in by_rank)
    assert draw["ordered_list_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert (await opening(service, sale_id)).body == published.body  # kept, the same

    # the operator's export, and anyone's check of it against what was published
    text = await _text(service, f"/v1/admin/sales/{sale_id}/opening/tickets", "text/csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["ticket"] for r in rows] == [str(tickets[u]) for u in by_rank]
    assert {r["drawn"] for r in rows} == {"1"}
    csv_file = tmp_path / "tickets.csv"
    csv_file.write_text(text)
    rc, out, err = await run_flashsale(service.settings, "opening", "verify", str(csv_file),
                                       "--seed", seed, "--digest", draw["ordered_list_sha256"],
                                       "--seed-sha256", draw["seed_sha256"])  # fmt: skip
    assert rc == 0, out + err
    assert "verified" in out
    # another seed, or one row moved, is caught
    rc, out, _ = await run_flashsale(service.settings, "opening", "verify", str(csv_file),
                                     "--seed", "another-seed")  # fmt: skip
    assert rc == 1
    assert "NOT verified" in out
    swapped = text.splitlines(keepends=True)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    tampered = tmp_path / "tampered.csv"
    tampered.write_text("".join(swapped))
    rc, out, _ = await run_flashsale(service.settings, "opening", "verify", str(tampered),
                                     "--seed", seed, "--json")  # fmt: skip
    assert rc == 1
    assert json.loads(out)["ok"] is False
    # JSON lines, and the command-line export, say the same
    jsonl = await _text(
        service, f"/v1/admin/sales/{sale_id}/opening/tickets?format=jsonl", "application/jsonl"
    )
    assert [json.loads(line)["ticket"] for line in jsonl.splitlines()] == [
        tickets[u] for u in by_rank
    ]
    out_file = tmp_path / "cli.csv"
    rc, _, err = await run_flashsale(service.settings, "opening", "export", sale_id, "--out",
                                     str(out_file))  # fmt: skip
    assert rc == 0, err
    assert out_file.read_text() == text
    assert draw["ordered_list_sha256"] in err
    rc, _, err = await run_flashsale(service.settings, "opening", "export", sale_id, "--out",
                                     str(out_file))  # fmt: skip
    assert rc == 2
    assert "never overwritten" in err


async def _text(service: Service, path: str, content_type: str) -> str:
    async with service.client.get(path, headers=service.admin_headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == content_type
        return await resp.text()


async def test_the_opening_route_answers_404_for_a_sale_without_a_window(
    service: Service,
) -> None:
    plain = await service.create_sale()
    reply = await opening(service, plain["sale_id"])
    assert (reply.status, reply.body["error"]) == (404, "opening_not_offered")
    reply = await opening(service, "no-such-sale")
    assert (reply.status, reply.body["error"]) == (404, "sale_not_found")
    reply = await service.call(
        "GET", f"/v1/admin/sales/{plain['sale_id']}/opening/tickets?format=xml",
        headers=service.admin_headers,
    )  # fmt: skip
    assert (reply.status, reply.body["error"]) == (400, "invalid_request")
    reply = await service.call("GET", f"/v1/admin/sales/{plain['sale_id']}/opening/tickets")
    assert reply.status == 401
    paths = openapi_spec()["paths"]
    assert "get" in paths["/v1/sales/{sale_id}/opening"]
    assert "get" in paths["/v1/admin/sales/{sale_id}/opening/tickets"]


# -- admission in ticket order ----------------------------------------------------------------


async def test_no_unit_is_sold_outside_ticket_order_while_tickets_wait(service: Service) -> None:
    sale_id, draw_at = await window_sale(service, stock=10, rate_per_user=0)
    users = [f"n{i:03d}" for i in range(100)]
    tickets = await tickets_of(service, sale_id, users)
    await after(draw_at)
    seed = (await public_sale(service, sale_id))["opening_seed"]
    # everyone hammers at once, three times each, the fastest scripts first
    replies = await gather_limited(150, *(service.buy(sale_id, u) for u in users * 3))
    winners = {u for u, r in zip(users * 3, replies, strict=True) if r.status == 201}
    ranks = {u: rank_of(seed, 100, tickets[u]) for u in users}
    assert winners == {u for u in users if ranks[u] <= 10}
    holders = await service.services.engine.redis.hgetall(
        Keyspace(service.settings.key_prefix).sale(sale_id).holders
    )
    assert set(holders) == winners
    assert set(holders.values()) == {"1"}
    for user, reply in zip(users * 3, replies, strict=True):
        if ranks[user] > 10:
            assert (reply.status, reply.body["position"]) == (202, ranks[user] - 11)


async def test_late_arrivals_join_the_end_in_arrival_order(service: Service) -> None:
    sale_id, draw_at = await window_sale(service, stock=3)
    early = [f"e{i}" for i in range(6)]
    await tickets_of(service, sale_id, early)
    await after(draw_at)
    late = [f"late{i}" for i in range(4)]
    positions = []
    for user in late:  # one after the other: arrival order
        reply = await service.buy(sale_id, user)
        assert reply.status == 202, reply.body
        positions.append((reply.body["ticket"], reply.body["position"]))
    # after the six of the window (three admitted), in the order they came
    assert positions == [(7, 3), (8, 4), (9, 5), (10, 6)]
    assert (await service.buy(sale_id, "late2")).body["ticket"] == 9  # kept
    draw = (await opening(service, sale_id)).body["opening"]
    assert (draw["window_tickets"], draw["tickets"]) == (6, 10)
    stats = await service.stats(sale_id)
    assert (stats["tickets"], stats["admitted"], stats["waiting"]) == (10, 3, 7)


async def test_nobody_waiting_means_served_at_once(service: Service) -> None:
    sale_id, draw_at = await window_sale(service, stock=10)
    await tickets_of(service, sale_id, ["w1", "w2"])
    await after(draw_at)
    reply = await service.buy(sale_id, "walk-in")
    assert reply.status == 201, reply.body  # a place was free: admitted and served at once
    assert (await service.buy(sale_id, "w1")).status == 201

    empty_id, empty_draw = await window_sale(service, stock=2)
    await after(empty_draw)  # nobody came during the window
    assert (await service.buy(empty_id, "first")).status == 201
    assert (await service.buy(empty_id, "second")).status == 201
    # both units are reserved, and may come back: the third waits first in line
    reply = await service.buy(empty_id, "third")
    assert (reply.status, reply.body["ticket"], reply.body["position"]) == (202, 3, 0)


async def test_asking_again_before_retry_after_changes_nothing(service: Service) -> None:
    sale_id, draw_at = await window_sale(service, stock=1)
    users = [f"a{i}" for i in range(5)]
    tickets = await tickets_of(service, sale_id, users)
    again = [await service.buy(sale_id, "a3") for _ in range(5)]
    assert {(r.status, r.body["ticket"], r.body["position"]) for r in again} == {
        (202, tickets["a3"], None)
    }
    await after(draw_at)
    seed = (await public_sale(service, sale_id))["opening_seed"]
    waiting = next(u for u in users if rank_of(seed, 5, tickets[u]) == 5)
    answers = [await service.buy(sale_id, waiting) for _ in range(6)]
    assert {(r.status, r.body["ticket"], r.body["position"]) for r in answers} == {
        (202, tickets[waiting], 3)
    }
    assert all(int(r.headers["Retry-After"]) >= 1 for r in answers)
    assert (await service.stats(sale_id))["tickets"] == 5


async def test_rate_limits_still_apply_to_ticket_holders(service: Service) -> None:
    sale_id, _ = await window_sale(
        service, draw_in_s=30, window_ms=30_000, rate_per_user=0.5, burst_per_user=2
    )
    first, second, third = [await service.buy(sale_id, "eager") for _ in range(3)]
    assert (first.status, second.status) == (202, 202)
    assert first.body["ticket"] == second.body["ticket"] == 1
    assert (third.status, third.body["error"]) == (429, "rate_limited")
    assert int(third.headers["Retry-After"]) >= 1
    assert (await service.buy(sale_id, "calm")).body["ticket"] == 2


async def test_places_not_taken_in_time_pass_to_the_next_tickets(service: Service) -> None:
    sale_id, draw_at = await window_sale(service, stock=2, admission_window_s=1)
    users = [f"p{i}" for i in range(6)]
    tickets = await tickets_of(service, sale_id, users)
    await after(draw_at)
    seed = (await public_sale(service, sale_id))["opening_seed"]
    by_rank = sorted(users, key=lambda u: rank_of(seed, 6, tickets[u]))
    assert (await service.buy(sale_id, by_rank[0])).status == 201  # rank 2 never comes

    async def admitted(n: int) -> bool:
        return bool((await public_sale(service, sale_id))["admitted"] >= n)

    await wait_for(lambda: admitted(3), timeout_s=5)
    reply = await service.buy(sale_id, by_rank[1])
    assert (reply.status, reply.body["error"]) == (409, "admission_passed")
    assert (await service.buy(sale_id, by_rank[2])).status == 201
    # both units are reserved now, and may come back: rank 4 is first in line for them
    reply = await service.buy(sale_id, by_rank[3])
    assert (reply.status, reply.body["position"]) == (202, 0)


async def test_stock_limits_and_reconcile_hold_through_expiry_and_cancels(
    service: Service,
) -> None:
    sale_id, draw_at = await window_sale(
        service, stock=6, per_user_limit=2, reservation_ttl_s=1, admission_window_s=1,
        rate_per_user=0,
    )  # fmt: skip
    users = [f"i{i:02d}" for i in range(25)]
    await tickets_of(service, sale_id, users)
    await after(draw_at)
    held_max = 0
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        replies = await gather_limited(25, *(service.buy(sale_id, u, {"quantity": 2})
                                             for u in users))  # fmt: skip
        for user, reply in zip(users, replies, strict=True):
            if reply.status == 201 and int(user[1:]) % 2:  # half change their mind
                await service.order_action(reply.body["order"]["order_id"], user, "cancel")
        stats = await service.stats(sale_id)
        assert stats["available"] + stats["reserved"] + stats["paid"] == 6, stats
        assert stats["available"] >= 0
        held_max = max(held_max, stats["reserved"] + stats["paid"])
        holders = await service.services.engine.redis.hgetall(
            Keyspace(service.settings.key_prefix).sale(sale_id).holders
        )
        assert all(int(n) <= 2 for n in holders.values()), holders
        await asyncio.sleep(0.2)
    assert held_max > 0
    await asyncio.sleep(1.2)  # the last reservations expire
    await assert_reconciled(service, sale_id)


async def test_a_sale_without_a_window_keeps_no_ticket(service: Service) -> None:
    sale = await service.create_sale(stock=50)
    replies = await gather_limited(20, *(service.buy(sale["sale_id"], f"u{i}") for i in range(20)))
    assert {r.status for r in replies} == {201}
    redis = service.services.engine.redis
    keys = Keyspace(service.settings.key_prefix).sale(sale["sale_id"])
    fields = await redis.hkeys(keys.sale)
    assert not [f for f in fields if f.startswith(("op_", "fc_"))]
    assert not [
        k async for k in redis.scan_iter(match=keys.ticket_bucket(0)[:-1] + "*", count=10_000)
    ]


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097])
def test_the_bulk_draw_is_the_one_by_one_draw(n: int) -> None:
    draw = lottery.Draw("x", n, shuffle.METHOD)
    assert draw.ranks() == [draw.rank(t) for t in range(1, n + 1)]
    order = shuffle.window_order("x", n)
    assert sorted(order) == list(range(1, n + 1))
    assert all(draw.rank(t) == r for r, t in enumerate(order, start=1))
    # the opening's draw is not the lottery's, whatever the seed
    if n > 3:
        assert draw.ranks() != lottery.Draw("x", n).ranks()


async def test_a_late_payment_jumps_no_ticket_holder(service: Service) -> None:
    sale_id, draw_at = await window_sale(
        service, stock=1, reservation_ttl_s=1, admission_window_s=30, rate_per_user=0
    )
    users = ["q1", "q2", "q3"]
    tickets = await tickets_of(service, sale_id, users)
    await after(draw_at)
    seed = (await public_sale(service, sale_id))["opening_seed"]
    first = min(users, key=lambda u: rank_of(seed, 3, tickets[u]))
    order = (await service.buy(sale_id, first)).body["order"]
    await asyncio.sleep(1.2)  # the reservation expires; two tickets still wait for the unit
    paid = await service.pay(order["order_id"])
    assert paid.body["payment"]["outcome"] == "refund_required", paid.body
    assert paid.body["payment"]["reason"] == "reservation_expired"

    # nobody waiting: a late payment may take the unit back, as in a sale without a window
    lone_id, lone_draw = await window_sale(service, stock=2, reservation_ttl_s=1)
    await after(lone_draw)
    order = (await service.buy(lone_id, "alone")).body["order"]
    await asyncio.sleep(1.2)
    paid = await service.pay(order["order_id"])
    assert (paid.body["payment"]["outcome"], paid.body["payment"]["late"]) == ("paid", True)
    await assert_reconciled(service, lone_id)


async def test_a_pause_gives_no_ticket_and_the_admitted_their_time_back(service: Service) -> None:
    sale_id, draw_at = await window_sale(service, stock=1, admission_window_s=1)
    users = ["r1", "r2", "r3"]
    tickets = await tickets_of(service, sale_id, users)
    admin = service.admin_headers
    assert (await service.call("POST", f"/v1/admin/sales/{sale_id}/pause", headers=admin)).status
    reply = await service.buy(sale_id, "r4")
    assert (reply.status, reply.body["error"]) == (409, "sale_paused")
    await after(draw_at + 1.5)  # the draw passes during the pause, and a window's length more
    assert (await service.call("POST", f"/v1/admin/sales/{sale_id}/resume", headers=admin)).status
    seed = (await public_sale(service, sale_id))["opening_seed"]
    first = min(users, key=lambda u: rank_of(seed, 3, tickets[u]))
    # the first rank's window starts at the resume: it may still buy
    assert (await service.buy(sale_id, first)).status == 201
    assert (await service.stats(sale_id))["tickets"] == 3


async def test_an_arrival_booking_sale_gives_tickets_to_booked_shoppers_only(
    service: Service,
) -> None:
    sale_id, draw_at = await window_sale(
        service, stock=1, booking_opens_at=at(-60), booking_closes_at=at(600),
        booking_required=True, admission="arrival",
    )  # fmt: skip
    for user in ("bk1", "bk2"):
        assert (await book(service, sale_id, user)).status == 201
    reply = await service.buy(sale_id, "stranger")
    assert (reply.status, reply.body["error"]) == (403, "booking_required")
    assert (await book(service, sale_id, "bk3")).status == 201  # booked, never asks to buy
    tickets = await tickets_of(service, sale_id, ["bk2", "bk1"])
    assert tickets == {"bk2": 1, "bk1": 2}  # the tickets' order, not the bookings'
    # the booking tells a ticket holder where they stand: waiting for the draw, not admitted
    before_draw = await me(service, sale_id, "bk1")
    assert before_draw["state"] == "waiting", before_draw
    assert (before_draw["queue"], before_draw["ticket"]) == ("opening", 2)
    assert before_draw["queue_rank"] is None
    assert before_draw["wait_is_lower_bound"] is True
    await after(draw_at)
    seed = (await public_sale(service, sale_id))["opening_seed"]
    first = min(tickets, key=lambda u: rank_of(seed, 2, tickets[u]))
    second = max(tickets, key=lambda u: rank_of(seed, 2, tickets[u]))
    standing = {u: await me(service, sale_id, u) for u in (first, second)}
    assert standing[first]["state"] == "admitted", standing
    assert standing[first]["queue_rank"] == 1
    assert standing[first]["admitted_until"]
    assert (standing[second]["state"], standing[second]["position"]) == ("waiting", 0)
    assert standing[second]["queue_rank"] == 2
    assert "ticket" not in await me(service, sale_id, "bk3")  # no ticket: as any arrival sale
    assert (await service.buy(sale_id, second)).body["position"] == 0
    assert (await service.buy(sale_id, first)).status == 201
    assert (await me(service, sale_id, first))["state"] == "purchased"
