"""Payments: the payment service's signed notifications decide orders, once each.

Refusals (a signature or a body we cannot take) change nothing; every decided payment is
answered 200 with its outcome, is recorded once however often it is sent, and reaches
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from flashsale.payments.simulator import new_id, signed_notification
from flashsale.settings import ConfirmMode
from flashsale.webhooks.signing import new_secret, parse_secret, sign
from tests.booking_helpers import book, queued_sale, sleep_until, wait_for
from tests.conftest import ServiceFactory
from tests.helpers import PAYMENT_SECRET, Reply, Service, assert_reconciled
from tests.outbox_helpers import EVENT_TEXT

PATH = "/v1/payments/events"
KEY = parse_secret(PAYMENT_SECRET)


async def reserve(service: Service, sale_id: str, user: str, quantity: int = 1) -> str:
    reply = await service.buy(sale_id, user, {"quantity": quantity})
    assert reply.status == 201, reply.body
    order_id: str = reply.body["order"]["order_id"]
    return order_id


async def order_hash(service: Service, order_id: str) -> dict[str, str]:
    engine = service.services.engine
    key = engine.keys.sale(order_id.split(".")[0]).order(order_id)
    return dict(await engine.redis.hgetall(key))


async def what_redis_holds(service: Service, sale_id: str, order_id: str) -> dict[str, Any]:
    """Everything a payment could change: the order, the sale's counters, the shoppers' held
    units, and how many events the sale's stream has ever had."""
    engine = service.services.engine
    keys = engine.keys.sale(sale_id)
    info = await engine.redis.xinfo_stream(keys.events)
    return {
        "order": await order_hash(service, order_id),
        "sale": dict(await engine.redis.hgetall(keys.sale)),
        "holders": dict(await engine.redis.hgetall(keys.holders)),
        "events": info["entries-added"],
    }


async def payments_of(service: Service, order_id: str) -> list[Any]:
    """The payments PostgreSQL holds for an order."""
    return list(
        await service.services.pool.fetch(
            "SELECT * FROM payments WHERE order_id = $1 ORDER BY decided_at", order_id
        )
    )


async def post(service: Service, body: bytes, headers: dict[str, str]) -> Reply:
    return await service.call("POST", PATH, data=body, headers=headers)


def notification(order_id: str, amount: int, currency: str = "USD", **ids: Any) -> bytes:
    body, _ = signed_notification(KEY, order_id, amount, currency, **ids)
    return body


def headers_for(
    body: bytes, *, key: bytes = KEY, msg_id: str = "msg_1", ts: int | None = None
) -> dict[str, str]:
    stamp = int(time.time()) if ts is None else ts
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(key, msg_id, stamp, body),
        "Content-Type": "application/json",
    }


# --- who may send a notification -------------------------------------------------------------


def _tampered(body: bytes) -> tuple[bytes, dict[str, str]]:
    headers = headers_for(body)
    return body.replace(b'"currency"', b' "currency"'), headers


def _wrong_key(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, headers_for(body, key=parse_secret(new_secret()))


def _at(offset_s: int) -> Any:
    return lambda body: (body, headers_for(body, ts=int(time.time()) + offset_s))


def _without(header: str) -> Any:
    def make(body: bytes) -> tuple[bytes, dict[str, str]]:
        headers = headers_for(body)
        del headers[header]
        return body, headers

    return make


def _signature(value: Any) -> Any:
    def make(body: bytes) -> tuple[bytes, dict[str, str]]:
        headers = headers_for(body)
        headers["webhook-signature"] = value(headers["webhook-signature"])
        return body, headers

    return make


def _shopper_token(service: Service) -> Any:
    return lambda body: (body, {**service.auth("u1"), "Content-Type": "application/json"})


UNSIGNED = {
    "tampered body": _tampered,
    "another key": _wrong_key,
    "timestamp 301 s old": _at(-301),
    "timestamp 301 s ahead": _at(301),
    "timestamp an hour old": _at(-3600),
    "no webhook-id": _without("webhook-id"),
    "no webhook-timestamp": _without("webhook-timestamp"),
    "no webhook-signature": _without("webhook-signature"),
    "signature without version": _signature(lambda s: s.removeprefix("v1,")),
    "signature not base64": _signature(lambda s: "v1,!!!" + s[6:]),
    "signature list of garbage": _signature(lambda s: "v1 , ,v1, v2,x"),
    "signature under another version": _signature(lambda s: "v1a," + s[3:]),
    "signature cut short": _signature(lambda s: s[:-4]),
    "eleven signatures": _signature(lambda s: " ".join([s] * 11)),
    "empty signature": _signature(lambda s: ""),
}


@pytest.mark.parametrize("case", sorted(UNSIGNED))
async def test_a_notification_we_cannot_trust_is_401_and_changes_nothing(
    service: Service, case: str
) -> None:
    sale = await service.create_sale(stock=2)
    order_id = await reserve(service, sale["sale_id"], "u1")
    before = await what_redis_holds(service, sale["sale_id"], order_id)
    body, headers = UNSIGNED[case](notification(order_id, 199_900))
    reply = await post(service, body, headers)
    assert reply.status == 401, reply.body
    assert reply.body["error"] == "invalid_signature"
    assert await what_redis_holds(service, sale["sale_id"], order_id) == before
    assert await payments_of(service, order_id) == []


async def test_a_shoppers_own_token_cannot_pay(service: Service) -> None:
    sale = await service.create_sale(stock=2)
    order_id = await reserve(service, sale["sale_id"], "u1")
    before = await what_redis_holds(service, sale["sale_id"], order_id)
    body, headers = _shopper_token(service)(notification(order_id, 199_900))
    reply = await post(service, body, headers)
    assert (reply.status, reply.body["error"]) == (401, "invalid_signature")
    assert await what_redis_holds(service, sale["sale_id"], order_id) == before


async def test_within_the_tolerance_and_with_several_signatures_it_is_taken(
    service: Service,
) -> None:
    sale = await service.create_sale(stock=3)
    orders = [await reserve(service, sale["sale_id"], f"u{i}") for i in range(3)]
    body = notification(orders[0], 199_900)
    assert (await post(service, body, headers_for(body, ts=int(time.time()) - 290))).status == 200
    body = notification(orders[1], 199_900)
    headers = headers_for(body, msg_id="msg_2")
    other = sign(parse_secret(new_secret()), "msg_2", int(headers["webhook-timestamp"]), body)
    # the payment service signs with an old and a new key while it rotates them
    headers["webhook-signature"] = f"v1a,abc {other} {headers['webhook-signature']}"
    assert (await post(service, body, headers)).status == 200
    for order_id in orders[:2]:
        assert (await order_hash(service, order_id))["status"] == "paid"


async def test_flashsale_takes_either_key_while_its_secret_is_rotated(
    make_service: ServiceFactory,
) -> None:
    new = new_secret()
    service = await make_service(payment_secrets=(new, PAYMENT_SECRET))
    sale = await service.create_sale(stock=3)
    first, second, third = [await reserve(service, sale["sale_id"], f"u{i}") for i in range(3)]
    assert (await service.pay(first, secret=PAYMENT_SECRET)).body["payment"]["outcome"] == "paid"
    assert (await service.pay(second, secret=new)).body["payment"]["outcome"] == "paid"
    reply = await service.pay(third, secret=new_secret())
    assert reply.status == 401, reply.body


async def test_without_a_payment_secret_the_route_is_503_and_serve_warns(
    make_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flashsale.http.app"):
        service = await make_service(payment_secrets=())
    assert any("FLASHSALE_PAYMENT_SECRET is not set" in r.getMessage() for r in caplog.records)
    sale = await service.create_sale(stock=2)
    order_id = await reserve(service, sale["sale_id"], "u1")
    reply = await service.pay(order_id)
    assert (reply.status, reply.body["error"]) == (503, "payments_not_configured")
    assert "FLASHSALE_PAYMENT_SECRET" in reply.body["message"]
    assert (await order_hash(service, order_id))["status"] == "reserved"


# --- what a notification must say ------------------------------------------------------------


def _data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "order_id": "ORDER", "payment_id": "pay_1", "amount_cents": 199_900, "currency": "USD",
    }  # fmt: skip
    data.update(changes)
    return {k: v for k, v in data.items() if v is not ...}


MALFORMED: dict[str, Any] = {
    "not JSON": b"{",
    "not an object": b"[]",
    "empty": b"",
    "not UTF-8": b'{"type": "\xff"}',
    "NaN amount": b'{"type": "payment.succeeded", "data": {"order_id": "ORDER", '
    b'"payment_id": "p", "amount_cents": NaN, "currency": "USD"}}',
    "a repeated key": b'{"type": "payment.succeeded", "type": "payment.succeeded", "data": {}}',
    "another type": {"type": "payment.failed", "data": _data()},
    "no type": {"data": _data()},
    "no data": {"type": "payment.succeeded"},
    "data not an object": {"type": "payment.succeeded", "data": "ORDER"},
    "an unknown field": {"type": "payment.succeeded", "data": _data(), "livemode": False},
    "an unknown data field": {"type": "payment.succeeded", "data": _data(partial=True)},
    "timestamp not a string": {"type": "payment.succeeded", "timestamp": 1, "data": _data()},
    "no order_id": {"type": "payment.succeeded", "data": _data(order_id=...)},
    "no amount": {"type": "payment.succeeded", "data": _data(amount_cents=...)},
    "order_id a number": {"type": "payment.succeeded", "data": _data(order_id=7)},
    "payment_id empty": {"type": "payment.succeeded", "data": _data(payment_id="")},
    "payment_id with a space": {"type": "payment.succeeded", "data": _data(payment_id="p 1")},
    "payment_id too long": {"type": "payment.succeeded", "data": _data(payment_id="p" * 256)},
    "payment_id not ASCII": {"type": "payment.succeeded", "data": _data(payment_id="pé")},
    "amount a string": {"type": "payment.succeeded", "data": _data(amount_cents="199900")},
    "amount a float": {"type": "payment.succeeded", "data": _data(amount_cents=1999.0)},
    "amount a boolean": {"type": "payment.succeeded", "data": _data(amount_cents=True)},
    "amount negative": {"type": "payment.succeeded", "data": _data(amount_cents=-1)},
    "amount too big": {"type": "payment.succeeded", "data": _data(amount_cents=2**53)},
    "currency lower case": {"type": "payment.succeeded", "data": _data(currency="usd")},
    "currency of four letters": {"type": "payment.succeeded", "data": _data(currency="USDT")},
    "currency null": {"type": "payment.succeeded", "data": _data(currency=None)},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_body_not_in_the_documented_form_is_400_and_changes_nothing(
    service: Service, case: str
) -> None:
    sale = await service.create_sale(stock=2)
    order_id = await reserve(service, sale["sale_id"], "u1")
    before = await what_redis_holds(service, sale["sale_id"], order_id)
    raw = MALFORMED[case]
    body = raw if isinstance(raw, bytes) else orjson.dumps(raw)
    body = body.replace(b"ORDER", order_id.encode())
    reply = await post(service, body, headers_for(body))
    assert (reply.status, reply.body["error"]) == (400, "invalid_request"), reply.body
    assert await what_redis_holds(service, sale["sale_id"], order_id) == before
    assert await payments_of(service, order_id) == []


async def test_the_documented_body_with_its_envelope_timestamp_is_taken(service: Service) -> None:
    sale = await service.create_sale(stock=2)
    order_id = await reserve(service, sale["sale_id"], "u1")
    body = orjson.dumps({
        "type": "payment.succeeded", "timestamp": "2026-12-01T10:00:00Z",
        "data": _data(order_id=order_id, payment_id=new_id("pay")),
    })  # fmt: skip
    reply = await post(service, body, headers_for(body))
    assert (reply.status, reply.body["payment"]["outcome"]) == (200, "paid")


# --- the shopper's side ----------------------------------------------------------------------


async def test_the_shoppers_pay_route_is_gone_but_they_read_and_cancel(service: Service) -> None:
    sale = await service.create_sale(stock=2)
    order_id = await reserve(service, sale["sale_id"], "u1")
    reply = await service.order_action(order_id, "u1", "pay")
    assert (reply.status, reply.body["error"]) == (410, "gone")
    assert "/v1/payments/events" in reply.body["message"]
    assert (await order_hash(service, order_id))["status"] == "reserved"
    read = await service.call("GET", f"/v1/orders/{order_id}", headers=service.auth("u1"))
    assert read.body["order"]["status"] == "reserved"
    cancelled = await service.order_action(order_id, "u1", "cancel")
    assert (cancelled.status, cancelled.body["order"]["status"]) == (200, "cancelled")


# --- paid ------------------------------------------------------------------------------------


async def test_a_payment_of_price_times_quantity_pays_the_order(service: Service) -> None:
    sale = await service.create_sale(stock=5, per_user_limit=3, price_cents=12_345)
    bought = await service.buy(sale["sale_id"], "u1", {"quantity": 3})
    order = bought.body["order"]
    assert (order["amount_cents"], order["currency"]) == (37_035, "USD")
    for amount in (12_345, 37_034, 37_036):  # a unit's price, a cent less, a cent more
        reply = await service.pay(order["order_id"], amount)
        assert reply.body["payment"]["reason"] == "amount_mismatch", reply.body
    good = new_id("pay")
    reply = await service.pay(order["order_id"], 37_035, payment_id=good)
    assert reply.status == 200
    payment = reply.body["payment"]
    assert payment["payment_id"] == good
    assert (payment["outcome"], payment["reason"], payment["late"]) == ("paid", None, False)
    assert (payment["amount_cents"], payment["currency"]) == (37_035, "USD")
    assert payment["decided_at"] >= payment["received_at"]
    read = await service.call("GET", f"/v1/orders/{order['order_id']}", headers=service.auth("u1"))
    assert read.body["order"]["status"] == "paid"
    stats = await service.stats(sale["sale_id"])
    assert (stats["paid"], stats["reserved"], stats["available"]) == (3, 0, 2)
    fields = await order_hash(service, order["order_id"])
    assert (fields["payment_id"], fields["paid_late"], fields["v"]) == (good, "0", "5")
    await assert_reconciled(service, sale["sale_id"])


async def test_a_sale_has_its_currency_and_payments_must_match_it(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(default_currency="JPY")
    euro = await service.create_sale(stock=2, currency="EUR", price_cents=500)
    default = await service.create_sale(stock=2, price_cents=500)
    assert (euro["currency"], default["currency"]) == ("EUR", "JPY")
    shown = await service.call("GET", f"/v1/sales/{euro['sale_id']}")
    assert shown.body["sale"]["currency"] == "EUR"
    order_id = await reserve(service, euro["sale_id"], "u1")
    wrong = await service.pay(order_id, 500, "JPY")
    assert wrong.body["payment"]["reason"] == "currency_mismatch"
    assert (await service.pay(order_id, 500, "EUR")).body["payment"]["outcome"] == "paid"
    order_id = await reserve(service, default["sale_id"], "u1")
    assert (await service.pay(order_id, 500, "EUR")).body["payment"]["reason"] == (
        "currency_mismatch"
    )
    assert (await service.pay(order_id, 500, "JPY")).body["payment"]["outcome"] == "paid"
    stored = await service.services.pool.fetch(
        "SELECT sale_id, currency FROM sales WHERE sale_id = ANY($1)",
        [euro["sale_id"], default["sale_id"]],
    )
    assert {r["sale_id"]: r["currency"] for r in stored} == {
        euro["sale_id"]: "EUR", default["sale_id"]: "JPY",
    }  # fmt: skip


@pytest.mark.parametrize("currency", ["usd", "US", "EURO", "U$D", 978, None])
async def test_a_sale_cannot_have_a_made_up_currency(service: Service, currency: Any) -> None:
    reply = await service.call(
        "POST", "/v1/admin/sales", json={**_sale_spec(), "currency": currency},
        headers=service.admin_headers,
    )  # fmt: skip
    assert (reply.status, reply.body["error"]) == (400, "invalid_request"), reply.body
    assert "currency" in reply.body["message"]


def _sale_spec() -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "sku": "s", "name": "S", "price_cents": 100, "stock": 1,
        "starts_at": now.isoformat(), "ends_at": (now + timedelta(hours=1)).isoformat(),
    }  # fmt: skip


async def test_a_sale_armed_before_sales_had_a_currency_takes_the_default(
    make_service: ServiceFactory, redis: Redis
) -> None:
    service = await make_service(default_currency="GBP")
    sale = await service.create_sale(stock=2, currency="EUR", price_cents=700)
    key = service.services.engine.keys.sale(sale["sale_id"]).sale
    await redis.hdel(key, "currency")  # as a sale armed by the previous release is
    fresh = await make_service(default_currency="GBP")  # a process that never read the sale
    shown = await fresh.call("GET", f"/v1/sales/{sale['sale_id']}")
    assert shown.body["sale"]["currency"] == "GBP"
    bought = await fresh.buy(sale["sale_id"], "u1")
    assert (bought.body["order"]["amount_cents"], bought.body["order"]["currency"]) == (700, "GBP")
    order_id = bought.body["order"]["order_id"]
    assert (await fresh.pay(order_id, 700, "EUR")).body["payment"]["reason"] == (
        "currency_mismatch"
    )
    assert (await fresh.pay(order_id, 700, "GBP")).body["payment"]["outcome"] == "paid"


# --- sent again ------------------------------------------------------------------------------


async def test_a_notification_sent_again_is_answered_identically_and_decided_once(
    service: Service,
) -> None:
    sale = await service.create_sale(stock=2)
    order_id = await reserve(service, sale["sale_id"], "u1")
    pay_a, pay_z = new_id("pay"), new_id("pay")
    first = await service.pay(order_id, payment_id=pay_a, webhook_id="msg_a")
    assert first.body["payment"]["outcome"] == "paid"
    after_first = await what_redis_holds(service, sale["sale_id"], order_id)
    await asyncio.sleep(0.01)  # a second decision would carry another time
    again = await service.pay(order_id, payment_id=pay_a, webhook_id="msg_a")
    assert (again.status, again.body) == (200, first.body)
    # under the same webhook-id the first answer stands, whatever the body says now
    odd = await service.pay(order_id, 1, "EUR", payment_id=pay_z, webhook_id="msg_a")
    assert (odd.status, odd.body) == (200, first.body)
    # the same payment under a new webhook-id (a payment service that lost its own record)
    new_id_ = await service.pay(order_id, payment_id=pay_a, webhook_id="msg_b")
    assert (new_id_.status, new_id_.body) == (200, first.body)
    assert await what_redis_holds(service, sale["sale_id"], order_id) == after_first
    await service.wait_for_postgres(sale["sale_id"])
    rows = await payments_of(service, order_id)
    assert [(r["payment_id"], r["webhook_id"]) for r in rows] == [(pay_a, "msg_a")]


async def test_deliveries_out_of_order_each_get_their_own_first_answer(service: Service) -> None:
    """Two payments for one order, each delivered twice, interleaved: the first paid it,
    the second must be refunded, and every redelivery repeats its payment's answer."""
    sale = await service.create_sale(stock=2)
    order_id = await reserve(service, sale["sale_id"], "u1")
    pay_1, pay_2 = new_id("pay"), new_id("pay")
    one = await service.pay(order_id, payment_id=pay_1, webhook_id="msg_1")
    two = await service.pay(order_id, payment_id=pay_2, webhook_id="msg_2")
    two_again = await service.pay(order_id, payment_id=pay_2, webhook_id="msg_2")
    one_again = await service.pay(order_id, payment_id=pay_1, webhook_id="msg_1")
    assert one.body == one_again.body
    assert two.body == two_again.body
    assert one.body["payment"]["outcome"] == "paid"
    assert two.body["payment"]["reason"] == "already_paid"
    assert (await order_hash(service, order_id))["payment_id"] == pay_1


# --- refund_required -------------------------------------------------------------------------


async def test_each_refund_reason_leaves_the_order_as_it_was_but_for_its_version(
    service: Service,
) -> None:
    sale = await service.create_sale(stock=5, price_cents=1000)
    sid = sale["sale_id"]
    cancelled = await reserve(service, sid, "u-cancel")
    await service.order_action(cancelled, "u-cancel", "cancel")
    paid = await reserve(service, sid, "u-paid")
    await service.pay(paid)
    reserved = await reserve(service, sid, "u-wrong")
    cases = [
        (cancelled, 1000, "USD", "order_cancelled"),
        (paid, 1000, "USD", "already_paid"),
        (reserved, 999, "USD", "amount_mismatch"),
        (reserved, 1000, "EUR", "currency_mismatch"),
        (f"{sid}.{'0' * 26}", 1000, "USD", "order_not_found"),
    ]
    for order_id, amount, currency, reason in cases:
        before = await what_redis_holds(service, sid, order_id)
        reply = await service.pay(order_id, amount, currency)
        assert reply.status == 200, reply.body
        payment = reply.body["payment"]
        assert (payment["outcome"], payment["reason"], payment["late"]) == (
            "refund_required", reason, False,
        )  # fmt: skip
        assert (payment["amount_cents"], payment["currency"]) == (amount, currency)
        after = await what_redis_holds(service, sid, order_id)
        assert after["sale"] == before["sale"]
        assert after["holders"] == before["holders"]
        if before["order"]:
            assert after["order"] == before["order"] | {"v": str(int(before["order"]["v"]) + 1)}
        else:
            assert after["order"] == {}
        assert after["events"] == before["events"] + 1  # the payment event, nothing else
    await assert_reconciled(service, sid)
    rows = await service.services.pool.fetch(
        "SELECT order_id, outcome, reason, order_version FROM payments"
        " WHERE reason IS NOT NULL AND (sale_id = $1 OR order_id = $2)",
        sid, f"{sid}.{'0' * 26}",
    )  # fmt: skip
    assert sorted(r["reason"] for r in rows) == sorted(c[3] for c in cases)
    versions = {r["order_id"]: r["order_version"] for r in rows if r["reason"] != "already_paid"}
    assert versions[f"{sid}.{'0' * 26}"] is None
    assert versions[cancelled] == 3  # reserved 1, cancelled 2, this payment 3


async def test_a_payment_for_an_order_of_no_sale_of_ours_is_stored_before_the_answer(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(run_writer=False)
    tag = new_id("t")[-8:]  # the test database is shared by the tests of a run
    orders = (f"ord_from_another_shop_{tag}", f"ghost-{tag}.0123456789abcdefghjkmnpqrs")
    for order_id in orders:
        reply = await service.pay(order_id, 500, "USD", webhook_id=f"msg-{order_id}")
        assert reply.status == 200, reply.body
        payment = reply.body["payment"]
        assert (payment["outcome"], payment["reason"]) == ("refund_required", "order_not_found")
        row = await service.services.pool.fetchrow(
            "SELECT * FROM payments WHERE payment_id = $1", payment["payment_id"]
        )
        assert row is not None  # no writer runs: it was stored before the answer
        assert (row["order_id"], row["sale_id"], row["outcome"]) == (
            order_id, None, "refund_required",
        )  # fmt: skip
        again = await service.pay(order_id, 500, "USD", webhook_id=f"msg-{order_id}")
        assert again.body == reply.body
        same_payment = await service.pay(order_id, 9, "EUR", payment["payment_id"])
        assert same_payment.body == reply.body
    assert [len(await payments_of(service, order_id)) for order_id in orders] == [1, 1]
    # the shop hears of the refund it owes: one event each, committed with the payment
    events = await service.services.pool.fetch(
        f"SELECT order_id, sequence, type, {EVENT_TEXT} AS payload FROM outbox"
        " WHERE order_id = ANY($1::text[])",
        list(orders),
    )
    assert sorted((e["order_id"], e["sequence"], e["type"]) for e in events) == sorted(
        (order_id, None, "payment.refund_required") for order_id in orders
    )
    for e in events:
        data = json.loads(e["payload"])["data"]
        assert (data["reason"], data["payment_amount_cents"]) == ("order_not_found", 500)


# --- late payments ---------------------------------------------------------------------------


async def expired(service: Service, order_id: str) -> None:
    async def done() -> bool:
        return (await order_hash(service, order_id))["status"] == "expired"

    await wait_for(done)


async def test_a_late_payment_takes_a_free_unit_where_that_jumps_nobody(service: Service) -> None:
    sale = await service.create_sale(stock=3, reservation_ttl_s=1)
    sid = sale["sale_id"]
    order_id = await reserve(service, sid, "u1")
    other = await reserve(service, sid, "u2")
    await expired(service, order_id)
    await expired(service, other)
    reply = await service.pay(order_id)
    payment = reply.body["payment"]
    assert (payment["outcome"], payment["reason"], payment["late"]) == ("paid", None, True)
    fields = await order_hash(service, order_id)
    assert (fields["status"], fields["paid_late"], fields["v"]) == ("paid", "1", "3")
    stats = await service.stats(sid)
    # the unit came from those on sale: 3 - 1 paid; the expiry still counted once each
    assert (stats["available"], stats["paid"], stats["expired"], stats["paid_late"]) == (2, 1, 2, 1)
    assert stats["reserved"] == 0
    read = await service.call("GET", f"/v1/orders/{order_id}", headers=service.auth("u1"))
    assert read.body["order"]["status"] == "paid"
    await assert_reconciled(service, sid)


async def test_a_payment_past_the_deadline_expires_the_reservation_first(
    make_service: ServiceFactory,
) -> None:
    """With no sweeper, the payment finds its reservation due: the units return (once), and
    the payment may not take those very units back: only units that were on sale before."""
    service = await make_service(run_sweeper=False)
    sale = await service.create_sale(stock=2, reservation_ttl_s=1)
    sid = sale["sale_id"]
    alone = await reserve(service, sid, "u1")
    taken = await reserve(service, sid, "u2")  # the sale is sold out now
    await asyncio.sleep(1.1)
    reply = await service.pay(alone)
    assert reply.body["payment"]["reason"] == "reservation_expired"
    stats = await service.stats(sid)
    assert (stats["available"], stats["expired"], stats["reserved"]) == (1, 1, 1)
    # u2's reservation expires the same way, and now a unit was on sale before the payment
    reply = await service.pay(taken)
    assert (reply.body["payment"]["outcome"], reply.body["payment"]["late"]) == ("paid", True)
    stats = await service.stats(sid)
    assert (stats["available"], stats["expired"], stats["paid"], stats["reserved"]) == (1, 2, 1, 0)
    await assert_reconciled(service, sid)


async def test_a_late_payment_is_refunded_where_it_would_oversell_or_exceed_the_limit(
    service: Service,
) -> None:
    # the reservations made after the expiry must outlive the few calls that follow it
    sale = await service.create_sale(stock=3, reservation_ttl_s=2, per_user_limit=1)
    sid = sale["sale_id"]
    late = await reserve(service, sid, "u1")
    await expired(service, late)
    again = await reserve(service, sid, "u1")  # u1 holds the limit again; units remain
    assert (await service.stats(sid))["available"] == 2
    reply = await service.pay(late)
    assert reply.body["payment"]["reason"] == "reservation_expired"
    await service.order_action(again, "u1", "cancel")
    await reserve(service, sid, "u2")
    await reserve(service, sid, "u3")
    await reserve(service, sid, "u4")  # and others took every unit
    reply = await service.pay(late)
    assert reply.body["payment"]["reason"] == "reservation_expired"
    stats = await service.stats(sid)
    assert stats["paid"] == 0
    assert stats["available"] + stats["reserved"] + stats["paid"] == 3
    await assert_reconciled(service, sid)


@pytest.mark.parametrize("state", ["pause", "close"])
async def test_a_late_payment_is_refunded_when_the_sale_is_not_selling(
    service: Service, state: str
) -> None:
    sale = await service.create_sale(stock=3, reservation_ttl_s=1)
    order_id = await reserve(service, sale["sale_id"], "u1")
    await expired(service, order_id)
    await service.call(
        "POST", f"/v1/admin/sales/{sale['sale_id']}/{state}", headers=service.admin_headers
    )
    reply = await service.pay(order_id)
    assert reply.body["payment"]["reason"] == "reservation_expired"
    assert (await order_hash(service, order_id))["status"] == "expired"


async def test_a_late_payment_for_an_fcode_order_is_refunded(service: Service) -> None:
    now = datetime.now(UTC)
    sale = await service.create_sale(
        stock=4, fcode_stock=2, reservation_ttl_s=1,
        fcode_opens_at=(now - timedelta(seconds=5)).isoformat(),
    )  # fmt: skip
    issued = await service.call(
        "POST", f"/v1/admin/sales/{sale['sale_id']}/fcodes",
        json={"campaign": "vip", "count": 1}, headers=service.admin_headers,
    )  # fmt: skip
    code = issued.body["codes"][0]["code"]
    bought = await service.buy(sale["sale_id"], "u1", {"fcode": code})
    order_id = bought.body["order"]["order_id"]
    await expired(service, order_id)
    reply = await service.pay(order_id)
    assert reply.body["payment"]["reason"] == "reservation_expired"
    stats = await service.stats(sale["sale_id"])
    assert (stats["paid"], stats["available"]) == (0, 2)
    # the code went back to use, and buys again
    assert (await service.buy(sale["sale_id"], "u1", {"fcode": code})).status == 201


async def test_a_late_payment_in_a_queued_sale_is_refunded(service: Service) -> None:
    sid, opens_at = await queued_sale(service, stock=4, reservation_ttl_s=1, admission_window_s=30)
    for user in ("u1", "u2"):
        assert (await book(service, sid, user)).status == 201
    await sleep_until(opens_at)
    order_id = await reserve(service, sid, "u1")
    await expired(service, order_id)
    reply = await service.pay(order_id)
    assert reply.body["payment"]["reason"] == "reservation_expired"
    assert (await service.stats(sid))["paid"] == 0


# --- PostgreSQL ------------------------------------------------------------------------------


async def test_payments_reach_postgres_through_the_writer(service: Service) -> None:
    sale = await service.create_sale(stock=4, reservation_ttl_s=1)
    sid = sale["sale_id"]
    paid, refunded, late = [await reserve(service, sid, f"u{i}") for i in range(3)]
    answers = [
        (await service.pay(paid)).body["payment"],
        (await service.pay(refunded, 1)).body["payment"],
    ]
    await expired(service, late)
    answers.append((await service.pay(late)).body["payment"])
    await service.wait_for_postgres(sid)

    async def written() -> list[Any]:
        return list(await service.services.pool.fetch(
            "SELECT * FROM payments WHERE sale_id = $1 ORDER BY decided_at", sid
        ))  # fmt: skip

    rows = await wait_for(lambda: _all(written, 3))
    # reserved 1 -> paid 2; reserved 1 -> refused 2; reserved 1 -> expired 2 -> paid late 3
    assert [r["order_version"] for r in rows] == [2, 2, 3]
    for answer, row in zip(answers, rows, strict=True):
        assert row["payment_id"] == answer["payment_id"]
        assert row["order_id"] == answer["order_id"]
        assert (row["outcome"], row["reason"], row["late"]) == (
            answer["outcome"], answer["reason"], answer["late"],
        )  # fmt: skip
        assert (row["amount_cents"], row["currency"]) == (
            answer["amount_cents"],
            answer["currency"],
        )
        redis_order = await order_hash(service, answer["order_id"])
        pg_order = await service.services.pool.fetchrow(
            "SELECT status, version FROM orders WHERE order_id = $1", answer["order_id"]
        )
        assert (pg_order["status"], pg_order["version"]) == (
            redis_order["status"], int(redis_order["v"]),
        )  # fmt: skip
    assert [r["late"] for r in rows] == [False, False, True]
    await assert_reconciled(service, sid)


async def _all(read: Any, n: int) -> Any:
    rows = await read()
    return rows if len(rows) == n else None


async def test_in_confirm_mode_postgres_the_payment_is_committed_before_the_answer(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(confirm_mode=ConfirmMode.POSTGRES, run_writer=False)
    sale = await service.create_sale(stock=3)
    order_id = await reserve(service, sale["sale_id"], "u1")
    reply = await service.pay(order_id)
    assert reply.body["payment"]["outcome"] == "paid"
    # no writer runs in this service: the rows got there before the 200
    row = await service.services.pool.fetchrow(
        "SELECT p.outcome, p.order_version, o.status, o.version FROM payments p"
        " JOIN orders o USING (order_id) WHERE p.payment_id = $1",
        reply.body["payment"]["payment_id"],
    )
    assert tuple(row) == ("paid", 2, "paid", 2)
    refund = await service.pay(order_id)
    assert refund.body["payment"]["reason"] == "already_paid"
    version = await service.services.pool.fetchval(
        "SELECT version FROM orders WHERE order_id = $1", order_id
    )
    assert version == 3


async def test_in_confirm_mode_postgres_a_payment_not_committed_is_503_then_taken(
    make_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = await make_service(
        confirm_mode=ConfirmMode.POSTGRES, run_writer=False, pg_confirm_timeout_s=0.5
    )
    sale = await service.create_sale(stock=3)
    order_id = await reserve(service, sale["sale_id"], "u1")
    committer = service.services.committer
    assert committer is not None
    real_commit = committer.commit

    async def stuck(row: Any) -> None:
        await asyncio.sleep(10)  # PostgreSQL not answering

    monkeypatch.setattr(committer, "commit", stuck)
    pay_1 = new_id("pay")
    first = await service.pay(order_id, payment_id=pay_1, webhook_id="msg_1")
    assert (first.status, first.body["error"]) == (503, "unavailable")
    assert await payments_of(service, order_id) == []
    monkeypatch.setattr(committer, "commit", real_commit)
    again = await service.pay(order_id, payment_id=pay_1, webhook_id="msg_1")
    assert (again.status, again.body["payment"]["outcome"]) == (200, "paid")
    assert (
        await service.services.pool.fetchval(
            "SELECT status FROM orders WHERE order_id = $1", order_id
        )
        == "paid"
    )


async def test_payment_events_written_in_any_order_leave_the_newest_state(
    make_service: ServiceFactory,
) -> None:
    """Writers may commit a sale's events out of order (several writers, a reclaimed batch):
    each payment event carries its order as of its version, so the newest wins anyway."""
    from flashsale.payments.store import PaymentRow, insert_payments
    from flashsale.store.orders import OrderRow, upsert_orders

    service = await make_service(run_writer=False)
    sale = await service.create_sale(stock=2)
    sid = sale["sale_id"]
    order_id = await reserve(service, sid, "u1")
    pay_1, pay_2 = sorted([new_id("pay"), new_id("pay")])
    await service.pay(order_id, payment_id=pay_1)
    await service.pay(order_id, payment_id=pay_2)  # already paid: version 3
    engine = service.services.engine
    entries = await engine.redis.xrange(engine.keys.sale(sid).events)
    events = [fields for _, fields in entries]
    assert [e.get("kind", "order") for e in events] == ["order", "order", "payment", "payment"]
    pool = service.services.pool
    for fields in reversed(events):
        if fields.get("kind") == "payment":
            await insert_payments(pool, [PaymentRow.from_event(sid, fields)])
        else:
            await upsert_orders(pool, [OrderRow.from_event(fields)])
    row = await pool.fetchrow("SELECT status, version FROM orders WHERE order_id = $1", order_id)
    assert tuple(row) == ("paid", 3)
    outcomes = await pool.fetch(
        "SELECT payment_id, outcome FROM payments WHERE order_id = $1 ORDER BY payment_id",
        order_id,
    )
    assert [tuple(r) for r in outcomes] == [(pay_1, "paid"), (pay_2, "refund_required")]


def test_new_ids_are_visible_ascii() -> None:
    assert new_id("pay").startswith("pay_")
    assert new_id("msg") != new_id("msg")


async def test_a_writer_of_the_previous_release_would_set_payment_events_aside(
    make_service: ServiceFactory,
) -> None:
    """A writer of the previous release takes every event without kind=booking for an order
    event: a payment event must fail that reading (and so become a dead letter, kept to be
    retried) rather than pass as an order event and be acknowledged away."""
    from flashsale.store import dead_letters
    from flashsale.store.orders import OrderRow

    service = await make_service(run_writer=False)
    sale = await service.create_sale(stock=2)
    order_id = await reserve(service, sale["sale_id"], "u1")
    await service.pay(order_id)
    await service.pay(f"{sale['sale_id']}.{'0' * 26}", 1, "USD")
    engine = service.services.engine
    entries = await engine.redis.xrange(engine.keys.sale(sale["sale_id"]).events)
    payments = [fields for _, fields in entries if fields.get("kind") == "payment"]
    assert len(payments) == 2
    for fields in payments:
        with pytest.raises(dead_letters.PERMANENT_ERRORS):
            OrderRow.from_event(fields)
