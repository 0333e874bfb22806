"""The operator's sale API: list, read, edit before the opening, delete what never opened; the
answers that say what happens (warnings, a paused sale, a close and its unpaid reservations);
stats that account for every unit."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from flashsale.http.admin import _SALE_FIELDS, parse_sale
from flashsale.http.admin_sales import merge_edit, sale_body
from flashsale.models import SaleDefinition
from flashsale.store.sales import fetch_sale
from tests.booking_helpers import at
from tests.helpers import Reply, Service, gather_limited, sale_spec


def unique_id(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"  # PostgreSQL is shared by the whole run


async def admin(service: Service, method: str, path: str, body: Any = None) -> Reply:
    return await service.call(method, path, json=body, headers=service.admin_headers)


async def create(service: Service, **fields: Any) -> Reply:
    return await admin(service, "POST", "/v1/admin/sales", sale_spec(**fields))


async def edit(service: Service, sale: str, **fields: Any) -> Reply:
    return await admin(service, "PATCH", f"/v1/admin/sales/{sale}", fields)


async def in_postgres(service: Service, sale_id: str) -> SaleDefinition | None:
    stored = await fetch_sale(service.services.pool, sale_id)
    return None if stored is None else stored[0]


# -- list and read ----------------------------------------------------------------------------


async def test_sales_are_listed_latest_start_first_and_filtered(service: Service) -> None:
    later = await service.create_sale(sale_id=unique_id("later"), starts_at=at(3600),
                                      ends_at=at(7200))  # fmt: skip
    now = await service.create_sale(sale_id=unique_id("now"))
    paused = await service.create_sale(sale_id=unique_id("paused"), starts_at=at(-60))
    await admin(service, "POST", f"/v1/admin/sales/{paused['sale_id']}/pause")
    mine = {later["sale_id"], now["sale_id"], paused["sale_id"]}

    reply = await admin(service, "GET", "/v1/admin/sales")
    assert reply.status == 200, reply.body  # it was 405
    listed = [s for s in reply.body["sales"] if s["sale_id"] in mine]
    assert [s["sale_id"] for s in listed] == [later["sale_id"], now["sale_id"], paused["sale_id"]]
    assert [(s["status"], s["control"]) for s in listed] == [
        ("scheduled", "active"), ("open", "active"), ("paused", "paused"),
    ]  # fmt: skip
    assert {"stock", "available", "reserved", "paid", "starts_at"} <= listed[0].keys()

    only = await admin(service, "GET", "/v1/admin/sales?status=paused,scheduled")
    assert [s["sale_id"] for s in only.body["sales"]] == [later["sale_id"], paused["sale_id"]]
    one = await admin(service, "GET", "/v1/admin/sales?limit=1")
    assert [s["sale_id"] for s in one.body["sales"]] == [later["sale_id"]]
    for bad in ("status=running", "status=", "limit=0", "limit=1001", "limit=x", "sort=id",
                "limit=1&limit=2"):  # fmt: skip
        refused = await admin(service, "GET", f"/v1/admin/sales?{bad}")
        assert (refused.status, refused.body["error"]) == (400, "invalid_request"), bad

    single = await admin(service, "GET", f"/v1/admin/sales/{paused['sale_id']}")
    assert single.status == 200
    assert (single.body["sale"]["control"], single.body["sale"]["reservation_ttl_s"]) == (
        "paused", 900,
    )  # fmt: skip
    assert (await admin(service, "GET", "/v1/admin/sales/no-such-sale")).status == 404


async def test_a_sale_postgresql_has_and_redis_not_is_named(service: Service) -> None:
    spec = sale_spec(sale_id=unique_id("half"))
    from flashsale.store.sales import insert_sale

    assert await insert_sale(service.services.pool, parse_sale(dict(spec)))
    reply = await admin(service, "GET", "/v1/admin/sales")
    assert spec["sale_id"] in reply.body["not_armed"]
    assert spec["sale_id"] not in {s["sale_id"] for s in reply.body["sales"]}


# -- create: times, warnings ------------------------------------------------------------------


async def test_epoch_numbers_are_refused_saying_which_format(service: Service) -> None:
    for value in (1_795_000_000, 1_795_000_000_000, 1.5e9):
        reply = await create(service, starts_at=value)
        assert (reply.status, reply.body["error"]) == (400, "invalid_request")
        message = reply.body["message"]
        assert "'starts_at' must be an ISO 8601 time with a UTC offset" in message, message
        assert "2026-11-22T10:00:00+08:00" in message
        assert "epoch numbers are not accepted" in message
    no_offset = await create(service, ends_at="2030-01-01T10:00:00")
    assert "UTC offset" in no_offset.body["message"]


async def test_a_sale_wholly_in_the_past_is_refused(service: Service) -> None:
    sale_id = unique_id("past")
    reply = await create(service, sale_id=sale_id, starts_at=at(-7200), ends_at=at(-3600))
    assert (reply.status, reply.body["error"]) == (400, "invalid_request")
    assert "'ends_at'" in reply.body["message"]
    assert "in the past" in reply.body["message"]
    assert await in_postgres(service, sale_id) is None
    assert (await service.call("GET", f"/v1/sales/{sale_id}")).status == 404


@pytest.mark.parametrize(
    ("starts_in_s", "warned"),
    [(-3600, "is in the past"), (-5, None), (60, None), (400 * 86_400, "more than a year ahead")],
)
async def test_a_start_in_the_past_or_far_ahead_is_warned_about(
    service: Service, starts_in_s: int, warned: str | None
) -> None:
    reply = await create(service, starts_at=at(starts_in_s), ends_at=at(starts_in_s + 86_400))
    assert reply.status == 201, reply.body
    warnings = reply.body["warnings"]
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1, warnings
        assert warned in warnings[0], warnings


# -- edit -------------------------------------------------------------------------------------


def test_sale_body_is_the_inverse_of_parse_sale() -> None:
    """Every field a create takes comes back out of a stored sale (an edit starts from it)."""
    full = parse_sale(sale_spec(
        sale_id="every-field", currency="EUR", per_user_limit=3, reservation_ttl_s=60,
        fcode_stock=2, fcode_opens_at=at(30), starts_at=at(60), ends_at=at(3600),
        booking_opens_at=at(10), booking_closes_at=at(60), booking_required=True,
        booking_capacity=100, admission="lottery", admission_ratio=1.5, admission_window_s=30,
        lottery_seed="seed", rate_per_user=2.5, burst_per_user=3, rate_per_address=100,
        burst_per_address=50,
    ))  # fmt: skip
    # the fields a booking queue excludes: an opening window, the F-code lane's release
    window = parse_sale(sale_spec(
        sale_id="window", starts_at=at(60), ends_at=at(3600), fcode_stock=2,
        fcode_release_at=at(120), opening_window_ms=5000, opening_seed="s", admission_ratio=2,
        admission_window_s=30,
    ))  # fmt: skip
    assert set(sale_body(full)) | set(sale_body(window)) == _SALE_FIELDS
    for sale in (full, window, parse_sale(sale_spec(sale_id="few-fields"))):
        assert parse_sale(sale_body(sale)) == sale


def test_an_edit_drops_what_only_the_old_value_needed() -> None:
    opens = at(60)  # one instant: booking closes as the sale opens
    lottery = parse_sale(sale_spec(
        starts_at=opens, booking_opens_at=at(10), booking_closes_at=opens,
        admission="lottery", lottery_seed="s", admission_window_s=30,
    ))  # fmt: skip
    arrival = parse_sale(merge_edit(lottery, {"admission": "arrival"}))
    assert arrival.booking is not None
    assert arrival.booking.lottery_seed is None
    dropped = parse_sale(merge_edit(lottery, {"booking_opens_at": None,
                                              "booking_closes_at": None}))  # fmt: skip
    assert dropped.booking is None
    unlimited = parse_sale(merge_edit(lottery, {"rate_per_user": 0}))
    assert (unlimited.rate_per_user.rate, unlimited.rate_per_user.burst) == (0.0, 0)
    with pytest.raises(Exception, match="'sale_id' cannot change"):
        merge_edit(lottery, {"sale_id": "other"})


async def test_a_typo_is_corrected_before_the_opening(service: Service) -> None:
    # the operator meant tomorrow at 10:00 and typed next year
    sale = await service.create_sale(starts_at=at(366 * 86_400), ends_at=at(367 * 86_400),
                                     stock=10, fcode_stock=2)  # fmt: skip
    sale_id = sale["sale_id"]
    starts, ends = at(86_400), at(90_000)
    reply = await edit(service, sale_id, starts_at=starts, ends_at=ends, stock=500,
                       price_cents=99_00, name="Mi 1 (corrected)")  # fmt: skip
    assert reply.status == 200, reply.body
    assert reply.body["warnings"] == []
    edited = reply.body["sale"]
    assert (edited["stock"], edited["available"], edited["fcode_available"]) == (500, 498, 2)
    assert (edited["price_cents"], edited["name"], edited["status"]) == (
        9900, "Mi 1 (corrected)", "scheduled",
    )  # fmt: skip
    # both stores hold the new definition, with the same id
    stored = await in_postgres(service, sale_id)
    redis_view = await service.services.engine.get_sale(sale_id)
    assert stored is not None
    assert stored.starts_ms == redis_view.definition.starts_ms
    assert (stored.stock, redis_view.definition.stock) == (500, 500)
    assert (stored.name, redis_view.definition.price_cents) == ("Mi 1 (corrected)", 9900)
    # an edit that changes nothing is answered as is; null is the default again
    assert (await edit(service, sale_id, stock=500)).status == 200
    opened = await edit(service, sale_id, fcode_opens_at=at(3600))
    assert opened.body["sale"]["fcode_opens_at"] != opened.body["sale"]["starts_at"]
    back = await edit(service, sale_id, fcode_opens_at=None)
    assert back.body["sale"]["fcode_opens_at"] == back.body["sale"]["starts_at"]
    stats = await service.stats(sale_id)
    assert stats["units_add_up"]
    assert stats["orders_in_postgres"]["total"] == 0


async def test_edits_are_refused_as_they_should_be(service: Service) -> None:
    scheduled = (await service.create_sale(starts_at=at(1800)))["sale_id"]
    for fields, words in [
        ({"sale_id": "another"}, "'sale_id' cannot change"),
        ({"colour": "red"}, "unknown field(s): colour"),
        ({"stock": 0}, "'stock' must be between"),
        ({"ends_at": at(1000)}, "'ends_at' must be after 'starts_at'"),
        ({"starts_at": 1_795_000_000}, "epoch numbers are not accepted"),
    ]:
        reply = await edit(service, scheduled, **fields)
        assert (reply.status, reply.body["error"]) == (400, "invalid_request"), fields
        assert words in reply.body["message"], reply.body
    assert (await edit(service, "no-such-sale", stock=3)).status == 404

    open_sale = await service.create_sale(stock=5)
    reply = await edit(service, open_sale["sale_id"], stock=50)
    assert (reply.status, reply.body["error"]) == (409, "sale_not_editable"), reply.body
    assert "the sale opened at" in reply.body["message"]
    assert (await service.stats(open_sale["sale_id"]))["stock"] == 5
    stored = await in_postgres(service, open_sale["sale_id"])
    assert stored is not None
    assert stored.stock == 5  # PostgreSQL rolled back too

    early_fcodes = await service.create_sale(starts_at=at(1800), fcode_stock=2,
                                             fcode_opens_at=at(-1))  # fmt: skip
    reply = await edit(service, early_fcodes["sale_id"], stock=50)
    assert "its F-code lane opened at" in reply.body["message"]
    booking = await service.create_sale(starts_at=at(1800), booking_opens_at=at(-1),
                                        booking_closes_at=at(1700))  # fmt: skip
    reply = await edit(service, booking["sale_id"], stock=50)
    assert "its booking opened at" in reply.body["message"]

    closed = (await service.create_sale(starts_at=at(1800)))["sale_id"]
    await admin(service, "POST", f"/v1/admin/sales/{closed}/close")
    reply = await edit(service, closed, stock=50)
    assert (reply.status, reply.body["error"]) == (410, "sale_ended")


async def test_issued_fcodes_keep_their_units(service: Service) -> None:
    sale_id = (await service.create_sale(starts_at=at(1800), stock=10, fcode_stock=5))["sale_id"]
    issued = await admin(service, "POST", f"/v1/admin/sales/{sale_id}/fcodes",
                         {"campaign": "vip", "count": 3})  # fmt: skip
    assert issued.status == 201, issued.body
    for fcode_stock in (0, 2):
        reply = await edit(service, sale_id, fcode_stock=fcode_stock)
        assert (reply.status, reply.body["error"]) == (409, "sale_not_editable")
        assert "fcode_stock may not go below 3" in reply.body["message"]
    assert (await edit(service, sale_id, fcode_stock=3)).status == 200
    assert (await edit(service, sale_id, fcode_stock=8, stock=20)).status == 200
    assert (await service.stats(sale_id))["fcode_available"] == 8


async def test_imported_bookings_keep_their_booking_policy(service: Service) -> None:
    sale = await service.create_sale(starts_at=at(1800), booking_opens_at=at(600),
                                     booking_closes_at=at(1700), admission="lottery",
                                     booking_capacity=10)  # fmt: skip
    sale_id = sale["sale_id"]
    await service.services.bookings.book_many(sale_id, ["a", "b", "c"])
    for fields, words in [
        ({"admission": "booking_order"}, "3 booking(s) were taken"),
        ({"lottery_seed": "chosen after seeing the bookings"}, "lottery seed stay"),
        ({"booking_opens_at": None, "booking_closes_at": None}, "3 booking(s) were taken"),
        ({"booking_capacity": 2}, "booking_capacity may not be below"),
    ]:
        reply = await edit(service, sale_id, **fields)
        assert (reply.status, reply.body["error"]) == (409, "sale_not_editable"), fields
        assert words in reply.body["message"], reply.body
    assert (await edit(service, sale_id, booking_capacity=3, stock=7)).status == 200
    stored = await in_postgres(service, sale_id)
    assert stored is not None
    assert stored.booking is not None
    assert (stored.booking.capacity, stored.stock) == (3, 7)
    assert (await service.stats(sale_id))["bookings"] == 3


async def test_an_edit_racing_the_opening_never_mixes_two_sales(service: Service) -> None:
    """Buys hammer a sale while the operator edits its stock up to the opening second: every
    edit before the opening takes effect whole, every one after is refused, and the sale that
    opens sells exactly the stock of the last edit that was accepted."""
    opens_in = 1.5
    sale = await service.create_sale(starts_at=at(opens_in), stock=20, per_user_limit=1)
    sale_id = sale["sale_id"]
    opens_at = time.monotonic() + opens_in
    accepted: list[int] = []
    refused: list[int] = []

    async def operator() -> None:
        stock = 20
        while time.monotonic() < opens_at + 0.5:
            stock += 1
            reply = await edit(service, sale_id, stock=stock)
            if reply.status == 200:
                accepted.append(stock)
            else:
                assert reply.body["error"] == "sale_not_editable", reply.body
                refused.append(stock)
            await asyncio.sleep(0.01)

    async def shopper(i: int) -> int:
        await asyncio.sleep(max(0.0, opens_at - time.monotonic() - 0.2) + i % 50 * 0.01)
        return (await service.buy(sale_id, f"s{i}")).status

    results = await asyncio.gather(
        operator(), gather_limited(100, *(shopper(i) for i in range(400)))
    )
    statuses: list[int] = results[1]
    assert accepted, "no edit landed before the opening"
    assert refused, "no edit came after the opening"
    assert min(refused) > max(accepted)  # once refused, never accepted again
    stock = accepted[-1]
    assert statuses.count(201) == stock  # sold out at exactly the last accepted stock
    stats = await service.stats(sale_id)
    assert (stats["stock"], stats["reserved"], stats["available"]) == (stock, stock, 0)
    stored = await in_postgres(service, sale_id)
    assert stored is not None
    assert stored.stock == stock


# -- delete -----------------------------------------------------------------------------------


async def test_a_sale_that_never_opened_is_deleted_whole(service: Service, redis: Redis) -> None:
    sale_id = unique_id("gone")
    await service.create_sale(sale_id=sale_id, starts_at=at(1800))
    pattern = f"{service.settings.key_prefix}:{{{sale_id}}}:*"
    assert [k async for k in redis.scan_iter(match=pattern, count=10_000)]
    reply = await admin(service, "DELETE", f"/v1/admin/sales/{sale_id}")
    assert (reply.status, reply.body) == (200, {"deleted": sale_id})
    assert [k async for k in redis.scan_iter(match=pattern, count=10_000)] == []
    assert sale_id not in await service.services.engine.sale_ids()
    assert await in_postgres(service, sale_id) is None
    assert (await service.call("GET", f"/v1/sales/{sale_id}")).status == 404
    assert (await admin(service, "DELETE", f"/v1/admin/sales/{sale_id}")).status == 404
    # the id is free again, for a sale of other terms
    again = await service.create_sale(sale_id=sale_id, stock=3, price_cents=100)
    assert again["available"] == 3
    assert (await service.buy(sale_id, "alice")).status == 201


async def test_only_a_sale_that_never_opened_and_holds_nothing_is_deleted(
    service: Service,
) -> None:
    opened = await service.create_sale(stock=5)
    closed_before = await service.create_sale(stock=5)
    await admin(service, "POST", f"/v1/admin/sales/{closed_before['sale_id']}/close")
    for sale in (opened, closed_before):
        reply = await admin(service, "DELETE", f"/v1/admin/sales/{sale['sale_id']}")
        assert (reply.status, reply.body["error"]) == (409, "sale_not_editable")
        assert "the sale opened at" in reply.body["message"]
        assert (await service.call("GET", f"/v1/sales/{sale['sale_id']}")).status == 200

    with_codes = await service.create_sale(starts_at=at(1800), fcode_stock=2)
    await admin(service, "POST", f"/v1/admin/sales/{with_codes['sale_id']}/fcodes",
                {"campaign": "c", "count": 1})  # fmt: skip
    reply = await admin(service, "DELETE", f"/v1/admin/sales/{with_codes['sale_id']}")
    assert (reply.status, reply.body["error"]) == (409, "sale_not_editable")
    assert "1 F-code campaign(s)" in reply.body["message"]

    booked = await service.create_sale(starts_at=at(1800), booking_opens_at=at(600),
                                       booking_closes_at=at(1700))  # fmt: skip
    await service.services.bookings.book_many(booked["sale_id"], ["a"])
    reply = await admin(service, "DELETE", f"/v1/admin/sales/{booked['sale_id']}")
    assert (reply.status, reply.body["error"]) == (409, "sale_not_editable")
    assert "1 booking(s)" in reply.body["message"]
    assert await in_postgres(service, booked["sale_id"]) is not None


async def test_a_half_created_sale_is_deleted_from_postgresql(service: Service) -> None:
    from flashsale.store.sales import insert_sale

    spec = sale_spec(sale_id=unique_id("half"), starts_at=at(3600), ends_at=at(7200))
    assert await insert_sale(service.services.pool, parse_sale(dict(spec)))
    reply = await admin(service, "DELETE", f"/v1/admin/sales/{spec['sale_id']}")
    assert reply.status == 200, reply.body
    assert await in_postgres(service, spec["sale_id"]) is None


# -- pause, close, stats ----------------------------------------------------------------------


async def test_a_paused_sale_says_so_and_one_not_started_says_that(service: Service) -> None:
    started = await service.create_sale(stock=3)
    later = await service.create_sale(stock=3, starts_at=at(1800))
    for sale in (started, later):
        pause = await admin(service, "POST", f"/v1/admin/sales/{sale['sale_id']}/pause")
        assert "409 sale_paused" in pause.body["note"]
    paused = await service.buy(started["sale_id"], "alice")
    assert (paused.status, paused.body["error"], paused.headers["Retry-After"]) == (
        409, "sale_paused", "5",
    )  # fmt: skip
    not_yet = await service.buy(later["sale_id"], "alice")
    assert (not_yet.status, not_yet.body["error"]) == (409, "sale_not_open")
    assert "Retry-After" not in not_yet.headers


async def test_a_close_says_what_becomes_of_unpaid_reservations(service: Service) -> None:
    sale = await service.create_sale(stock=5, reservation_ttl_s=600)
    sale_id = sale["sale_id"]
    order = (await service.buy(sale_id, "alice")).body["order"]
    reply = await admin(service, "POST", f"/v1/admin/sales/{sale_id}/close")
    note = reply.body["note"]
    assert "1 unit(s) reserved and unpaid can still be paid or cancelled" in note, note
    assert order["expires_at"] in note
    stats = await service.stats(sale_id)
    assert (stats["reserved"], stats["last_reservation_expires_at"]) == (1, order["expires_at"])
    # and so it is: the reservation is paid after the close
    assert (await service.pay(order["order_id"])).body["payment"]["outcome"] == "paid"
    stats = await service.stats(sale_id)
    assert (stats["reserved"], stats["paid"], stats["last_reservation_expires_at"]) == (
        0, 1, None,
    )  # fmt: skip
    empty = await service.create_sale(stock=5)
    reply = await admin(service, "POST", f"/v1/admin/sales/{empty['sale_id']}/close")
    assert "No reservation is waiting for payment" in reply.body["note"]


async def test_stats_account_for_every_unit_with_the_fcode_lane(service: Service) -> None:
    sale = await service.create_sale(stock=10, fcode_stock=4, per_user_limit=2)
    sale_id = sale["sale_id"]
    issued = await admin(service, "POST", f"/v1/admin/sales/{sale_id}/fcodes",
                         {"campaign": "vip", "count": 1})  # fmt: skip
    code = issued.body["codes"][0]["code"]
    assert (await service.buy(sale_id, "a", {"quantity": 2})).status == 201
    paid = (await service.buy(sale_id, "b")).body["order"]["order_id"]
    cancelled = (await service.buy(sale_id, "c")).body["order"]["order_id"]
    assert (await service.buy(sale_id, "d", {"fcode": code})).status == 201
    await service.pay(paid)
    await service.order_action(cancelled, "c", "cancel")
    stats = await service.stats(sale_id)
    units = {k: stats[k] for k in ("stock", "available", "fcode_stock", "fcode_available",
                                   "reserved", "paid", "cancelled", "sold_total")}  # fmt: skip
    assert units == {
        "stock": 10, "available": 3, "fcode_stock": 4, "fcode_available": 3,
        "reserved": 3, "paid": 1, "cancelled": 1, "sold_total": 5,
    }  # fmt: skip
    assert stats["available"] + stats["fcode_available"] + stats["reserved"] + stats["paid"] == 10
    assert stats["units_add_up"] is True
    assert (stats["status"], stats["control"]) == ("open", "active")
    # a counter put wrong in Redis shows at once
    await service.services.engine.redis.hincrby(
        service.services.engine.keys.sale(sale_id).sale, "available", 1
    )
    assert (await service.stats(sale_id))["units_add_up"] is False


async def test_a_start_edited_into_the_past_opens_the_sale(service: Service) -> None:
    sale_id = (await service.create_sale(starts_at=at(1800), stock=2))["sale_id"]
    reply = await edit(service, sale_id, starts_at=(datetime.now(UTC) - timedelta(hours=2))
                       .isoformat())  # fmt: skip
    assert reply.status == 200, reply.body
    assert "is in the past" in reply.body["warnings"][0]
    assert reply.body["sale"]["status"] == "open"
    assert (await service.buy(sale_id, "alice")).status == 201
