"""The bounds of every sale option. Each bound is one the Lua scripts can honour: a value just
outside it is 400 ``invalid_request`` naming the field and creates nothing (no row in
PostgreSQL, no key in Redis); the extreme values just inside make a sale that sells (or refuses
with a clean 4xx the option explains) and takes bookings where it offers them."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from typing import Any

import pytest

from tests.booking_helpers import at, book, sleep_until
from tests.helpers import Reply, Service, sale_spec

EARLIEST = "2000-01-01T00:00:00+00:00"
LATEST = "9999-01-01T00:00:00+00:00"
BEFORE_EARLIEST = "1999-12-31T23:59:59.999+00:00"
AFTER_LATEST = "9999-01-01T00:00:00.001+00:00"


def booking() -> dict[str, Any]:
    """Options of a sale that takes bookings from a minute ago for half an hour (arrival)."""
    return {"booking_opens_at": at(-60), "booking_closes_at": at(1800)}


def queue(**fields: Any) -> dict[str, Any]:
    """Options of a booking_order sale that takes bookings now and opens in half an hour."""
    opens = at(1800)
    return {"booking_opens_at": at(-60), "booking_closes_at": opens, "starts_at": opens,
            "ends_at": at(3600), "admission": "booking_order", **fields}  # fmt: skip


def unique_id(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"  # PostgreSQL is shared by the whole run


def assert_clean_error(reply: Reply, status: int, code: str, what: object = "") -> None:
    assert (reply.status, reply.body.get("error")) == (status, code), (what, reply.body)
    assert set(reply.body) == {"error", "message"}, (what, reply.body)
    assert isinstance(reply.body["message"], str), what
    assert reply.body["message"], what


async def assert_nothing_created(service: Service, sale_id: str, what: object = "") -> None:
    rows = await service.services.pool.fetchval(
        "SELECT count(*) FROM sales WHERE sale_id = $1", sale_id
    )
    assert rows == 0, (what, "a refused sale is in PostgreSQL")
    engine = service.services.engine
    keys = [
        k
        async for k in engine.redis.scan_iter(
            match=f"{engine.keys.prefix}:{{{sale_id}}}*", count=10_000
        )
    ]
    assert keys == [], (what, "a refused sale left keys in Redis")
    assert not await engine.redis.sismember(engine.keys.sales_index, sale_id), what


async def create(service: Service, **fields: Any) -> Reply:
    spec = sale_spec(**fields)
    spec.setdefault("sale_id", unique_id("opt"))
    return await service.call("POST", "/v1/admin/sales", json=spec, headers=service.admin_headers)


# -- just outside ---------------------------------------------------------------------------


def outside() -> dict[str, tuple[str, dict[str, Any]]]:
    """label: (the field the message must name, the options)"""
    return {
        "stock 0": ("stock", {"stock": 0}),
        "stock above 100M": ("stock", {"stock": 100_000_001}),
        "fcode_stock negative": ("fcode_stock", {"fcode_stock": -1}),
        "fcode_stock above stock": ("fcode_stock", {"stock": 10, "fcode_stock": 11}),
        "price_cents negative": ("price_cents", {"price_cents": -1}),
        "price_cents above 1e12": ("price_cents", {"price_cents": 10**12 + 1}),
        "per_user_limit 0": ("per_user_limit", {"per_user_limit": 0}),
        "per_user_limit 1001": ("per_user_limit", {"per_user_limit": 1001}),
        "reservation_ttl_s 0": ("reservation_ttl_s", {"reservation_ttl_s": 0}),
        "reservation_ttl_s above a day": ("reservation_ttl_s", {"reservation_ttl_s": 86_401}),
        "starts_at before 2000": ("starts_at", {"starts_at": BEFORE_EARLIEST}),
        "ends_at after 9999-01-01": ("ends_at", {"ends_at": AFTER_LATEST}),
        "fcode_opens_at before 2000": ("fcode_opens_at", {"fcode_opens_at": BEFORE_EARLIEST}),
        "booking_opens_at before 2000": (
            "booking_opens_at",
            {**booking(), "booking_opens_at": BEFORE_EARLIEST},
        ),
        "booking_closes_at after 9999-01-01": (
            "booking_closes_at",
            {**booking(), "booking_closes_at": AFTER_LATEST, "ends_at": LATEST},
        ),
        "booking_capacity 0": ("booking_capacity", {**booking(), "booking_capacity": 0}),
        "booking_capacity above 1e9": (
            "booking_capacity",
            {**booking(), "booking_capacity": 1_000_000_001},
        ),
        "admission_ratio below 0.01": ("admission_ratio", queue(admission_ratio=0.0099999)),
        "admission_ratio above 1000": ("admission_ratio", queue(admission_ratio=1000.000001)),
        "admission_window_s 0": ("admission_window_s", queue(admission_window_s=0)),
        "admission_window_s above a day": ("admission_window_s", queue(admission_window_s=86_401)),
        # GCRA: one request every 1e6 / rate µs. 1e-15 made that 1e21 µs, an expiry Redis refuses:
        # every buy and booking of the sale answered 500.
        "rate_per_user 1e-15": ("rate_per_user", {"rate_per_user": 1e-15}),
        "rate_per_user below 0.01": ("rate_per_user", {"rate_per_user": 0.0099999}),
        "rate_per_user above 1M": ("rate_per_user", {"rate_per_user": 1_000_000.5}),
        "rate_per_user negative": ("rate_per_user", {"rate_per_user": -0.5}),
        "rate_per_address 1e-15": ("rate_per_address", {"rate_per_address": 1e-15}),
        "rate_per_address below 0.01": ("rate_per_address", {"rate_per_address": 0.0099999}),
        "rate_per_address above 1M": ("rate_per_address", {"rate_per_address": 1_000_001}),
        "burst_per_user 0": ("burst_per_user", {"rate_per_user": 1, "burst_per_user": 0}),
        "burst_per_user above 1M": ("burst_per_user", {"burst_per_user": 1_000_001}),
        "burst_per_address 0": (
            "burst_per_address",
            {"rate_per_address": 1, "burst_per_address": 0},
        ),
        "burst_per_address above 1M": (
            "burst_per_address",
            {"rate_per_address": 1, "burst_per_address": 1_000_001},
        ),
        "burst_per_user without a rate": (
            "burst_per_user",
            {"rate_per_user": 0, "burst_per_user": 5},
        ),
        "burst_per_address false without a rate": (
            "burst_per_address",
            {"burst_per_address": False},
        ),
        "burst_per_address 0.0 without a rate": ("burst_per_address", {"burst_per_address": 0.0}),
        "burst_per_user a float": ("burst_per_user", {"burst_per_user": 2.0}),
        # text: what PostgreSQL's text, a CSV export or a shop page cannot carry
        "sku with NUL": ("sku", {"sku": "mi\u00001"}),
        "sku with a lone surrogate": ("sku", {"sku": "mi\ud8001"}),
        "sku 65 characters": ("sku", {"sku": "k" * 65}),
        "name with NUL": ("name", {"name": "\u0000"}),
        "name with a lone surrogate": ("name", {"name": "\udfff"}),
        "name with a line separator": ("name", {"name": "Mi\u20281"}),
        "name 201 characters": ("name", {"name": "n" * 201}),
        "lottery_seed with NUL": (
            "lottery_seed",
            queue(admission="lottery", lottery_seed="seed\u0000"),
        ),
        "lottery_seed with a lone surrogate": (
            "lottery_seed",
            queue(admission="lottery", lottery_seed="seed\ud800"),
        ),
        "lottery_seed 129 characters": (
            "lottery_seed",
            queue(admission="lottery", lottery_seed="s" * 129),
        ),
        "lottery_seed empty": ("lottery_seed", queue(admission="lottery", lottery_seed="")),
    }


@pytest.mark.parametrize("label", outside())
async def test_a_value_just_outside_a_bound_is_400_and_creates_nothing(
    service: Service, label: str
) -> None:
    field, fields = outside()[label]
    sale_id = unique_id("out")
    reply = await create(service, sale_id=sale_id, **fields)
    assert_clean_error(reply, 400, "invalid_request", label)
    if "surrogate" not in label:  # JSON cannot carry a lone surrogate: the body is refused
        assert f"'{field}'" in reply.body["message"], (label, reply.body)
    await assert_nothing_created(service, sale_id, label)


async def test_a_rate_too_small_for_the_scripts_is_refused(service: Service) -> None:
    """The defect this file began with: such a rate was accepted and then every buy answered
    500. The message says what is allowed."""
    for who in ("user", "address"):
        reply = await create(service, **{f"rate_per_{who}": 1e-15})
        assert_clean_error(reply, 400, "invalid_request", who)
        message = reply.body["message"]
        assert f"'rate_per_{who}'" in message, message
        assert "0.01" in message, message
        assert "1000000" in message.replace(",", ""), message


# -- just inside ----------------------------------------------------------------------------


async def buy(service: Service, sale_id: str, user: str, quantity: int = 1) -> Reply:
    return await service.buy(sale_id, user, {"quantity": quantity})


async def assert_sells(
    service: Service, sale: dict[str, Any], user: str = "u", quantity: int = 1
) -> dict[str, Any]:
    reply = await buy(service, sale["sale_id"], user, quantity)
    assert reply.status == 201, (sale, reply.body)
    order: dict[str, Any] = reply.body["order"]
    assert order["quantity"] == quantity
    await service.wait_for_postgres(sale["sale_id"])
    row = await service.services.pool.fetchrow(
        "SELECT user_id, quantity, expires_at FROM orders WHERE order_id = $1", order["order_id"]
    )
    assert row is not None
    assert (row["user_id"], row["quantity"]) == (user, quantity)
    return order


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


async def test_stock_and_limits_at_their_extremes(service: Service) -> None:
    await assert_sells(service, await service.create_sale(stock=1))
    big = await service.create_sale(
        stock=100_000_000, per_user_limit=1000, price_cents=10**12, fcode_stock=99_999_000
    )
    # price x quantity = 10^15 cents: still exact as a double (below 2^53)
    await assert_sells(service, big, quantity=1000)
    assert (await buy(service, big["sale_id"], "v", 1001)).status == 400
    free = await service.create_sale(price_cents=0, per_user_limit=1)
    await assert_sells(service, free)
    assert_clean_error(await buy(service, free["sale_id"], "u"), 409, "limit_reached")


async def test_every_unit_set_aside_for_fcodes_leaves_the_public_sold_out(
    service: Service,
) -> None:
    sale = await service.create_sale(stock=5, fcode_stock=5, fcode_opens_at=EARLIEST)
    assert sale["available"] == 0
    assert_clean_error(await buy(service, sale["sale_id"], "u"), 409, "sold_out")


async def test_reservation_ttl_at_its_extremes(service: Service) -> None:
    for ttl_s in (1, 86_400):
        sale = await service.create_sale(reservation_ttl_s=ttl_s)
        order = await assert_sells(service, sale)
        assert ms(order["expires_at"]) - ms(order["created_at"]) == ttl_s * 1000, order


async def test_the_widest_times_make_a_sale_that_sells_and_books(service: Service) -> None:
    sale = await service.create_sale(
        starts_at=EARLIEST, ends_at=LATEST, fcode_opens_at=EARLIEST, fcode_stock=1,
        booking_opens_at=EARLIEST, booking_closes_at=LATEST,
    )  # fmt: skip
    assert (sale["starts_at"], sale["ends_at"]) == (
        "2000-01-01T00:00:00.000Z", "9999-01-01T00:00:00.000Z"
    )  # fmt: skip
    assert (await book(service, sale["sale_id"], "u")).status == 201
    await assert_sells(service, sale)
    view = await service.call("GET", f"/v1/sales/{sale['sale_id']}")
    assert view.body["sale"]["status"] == "open"


async def test_booking_capacity_at_its_extremes(service: Service) -> None:
    one = await service.create_sale(**booking(), booking_capacity=1)
    assert (await book(service, one["sale_id"], "first")).status == 201
    assert_clean_error(await book(service, one["sale_id"], "second"), 409, "booking_full")
    many = await service.create_sale(**booking(), booking_capacity=1_000_000_000)
    assert (await book(service, many["sale_id"], "first")).status == 201
    await assert_sells(service, many)


@pytest.mark.parametrize(
    "options",
    [
        {"stock": 100, "admission": "booking_order", "admission_ratio": 0.01,
         "admission_window_s": 1},
        # 10^8 x 1000 = 10^11 places in the first wave: stored and read back exactly
        {"stock": 100_000_000, "admission": "lottery", "admission_ratio": 1000.0,
         "admission_window_s": 86_400, "lottery_seed": "s" * 128},
    ],
    ids=["smallest", "largest"],
)  # fmt: skip
async def test_queue_options_at_their_extremes(service: Service, options: dict[str, Any]) -> None:
    opens_in_s = 1.5
    opens_at = time.monotonic() + opens_in_s
    sale = await service.create_sale(
        booking_opens_at=at(-60), booking_closes_at=at(opens_in_s), starts_at=at(opens_in_s),
        booking_required=True, **options,
    )  # fmt: skip
    assert (await book(service, sale["sale_id"], "u")).status == 201
    await sleep_until(opens_at)
    await asyncio.sleep(0.2)  # a few sweeper passes: admit.lua has stored the queue again
    await assert_sells(service, sale)
    stats = await service.stats(sale["sale_id"])
    assert stats["admitted"] == 1  # min(the first wave, the bookings)
    slots = await service.services.engine.redis.hget(
        service.services.engine.keys.sale(sale["sale_id"]).sale, "adm_slots"
    )
    assert int(slots) == -(-options["stock"] * int(options["admission_ratio"] * 100) // 100)


async def test_the_slowest_rate_with_the_largest_burst_still_works(service: Service) -> None:
    """rate 0.01 and burst 1,000,000: the limiter's arrival time runs up to 10^14 µs (about
    3 years) ahead of now. Put it there, just short of a refusal, and buy and book: the
    scripts must store it (exactly, and with a valid expiry) rather than fail."""
    limits = {"rate_per_user": 0.01, "burst_per_user": 1_000_000,
              "rate_per_address": 0.01, "burst_per_address": 1_000_000}  # fmt: skip
    sale = await service.create_sale(**limits, **booking(), starts_at=at(-5))
    sale_id = sale["sale_id"]
    assert sale["rate_limits"]["per_user"] == {"rate": 0.01, "burst": 1_000_000}
    engine = service.services.engine
    keys = engine.keys.sale(sale_id)
    interval_us = 100_000_000
    redis_time = await engine.redis.time()
    now_us = redis_time[0] * 1_000_000 + redis_time[1]
    furthest = now_us + (1_000_000 - 1) * interval_us  # one more request is still allowed
    for key in (keys.requests_of_user("u"), keys.requests_of_address("127.0.0.1")):
        await engine.redis.set(key, furthest, px=10**11)
    await assert_sells(service, sale)
    stored = int(await engine.redis.get(keys.requests_of_user("u")))
    assert stored == furthest + interval_us  # exact: far below 2^53
    assert 0 < await engine.redis.pttl(keys.requests_of_user("u")) <= 10**11 + 1
    # and now the limit holds: the next request must wait 100 s
    refused = await buy(service, sale_id, "u")
    assert_clean_error(refused, 429, "rate_limited")
    assert 99 <= int(refused.headers["Retry-After"]) <= 101
    # a booking of another shopper on the same address at the edge: refused cleanly too
    assert_clean_error(await book(service, sale_id, "w"), 429, "rate_limited")
    await engine.redis.delete(keys.requests_of_address("127.0.0.1"))
    assert (await book(service, sale_id, "w")).status == 201


async def test_the_fastest_and_slowest_rates_sell(service: Service) -> None:
    fast = await service.create_sale(rate_per_user=1_000_000, burst_per_user=1,
                                     rate_per_address=1_000_000, burst_per_address=1)  # fmt: skip
    await assert_sells(service, fast)
    slow = await service.create_sale(per_user_limit=5, rate_per_user=0.01, burst_per_user=1,
                                      rate_per_address=0.01)  # fmt: skip
    await assert_sells(service, slow)
    refused = await buy(service, slow["sale_id"], "u")
    assert_clean_error(refused, 429, "rate_limited")
    assert 99 <= int(refused.headers["Retry-After"]) <= 101
    off = await service.create_sale(rate_per_user=0, rate_per_address=0, burst_per_address=0,
                                     per_user_limit=20)  # fmt: skip
    assert off["rate_limits"]["per_user"] == {"rate": 0.0, "burst": 0}
    replies = await asyncio.gather(*(buy(service, off["sale_id"], "u") for _ in range(10)))
    assert {r.status for r in replies} == {201}


async def test_text_options_at_their_longest(service: Service) -> None:
    sale = await service.create_sale(
        sku="k" * 64, name="\U0001f4f1" * 200, **queue(admission="lottery"),
        lottery_seed="\u00e9" * 128,
    )  # fmt: skip
    assert (sale["sku"], sale["name"]) == ("k" * 64, "\U0001f4f1" * 200)
    row = await service.services.pool.fetchrow(
        "SELECT sku, name, lottery_seed FROM sales WHERE sale_id = $1", sale["sale_id"]
    )
    assert tuple(row) == ("k" * 64, "\U0001f4f1" * 200, "\u00e9" * 128)
    assert (await book(service, sale["sale_id"], "u")).status == 201
