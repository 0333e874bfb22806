"""The demo's and the rehearsal's checkout hand-off: the simulated payment service (its mix of
misbehaviours, reproducible from a seed, and what each answer must be), the receiver that counts
order events, and the payment checks against PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson
import pytest

from flashsale.handoff_checks import PAID_ONCE, REASONS, payment_checks
from flashsale.outbox.receiver import EventReceiver
from flashsale.payments.simulator import (
    Expect,
    Kind,
    PaymentMix,
    PaymentService,
    Send,
    Shares,
    answer_problem,
)
from flashsale.webhooks import signing
from tests.helpers import PAYMENT_SECRET, Service

SECRET = "whsec_" + "cmVjZWl2ZXIgb2YgdGhlIGRlbW8ncyBldmVudHM="


def test_the_mix_is_a_function_of_the_seed_and_the_order() -> None:
    mix = PaymentMix(seed=7)
    orders = [f"sale.order-{i}" for i in range(20_000)]
    kinds = [mix.kind(o) for o in orders]
    assert kinds == [PaymentMix(seed=7).kind(o) for o in orders]  # reproducible
    assert kinds != [PaymentMix(seed=8).kind(o) for o in orders]
    shares = Counter(kinds)
    for kind, share in ((Kind.LATE, 0.05), (Kind.REPEATED, 0.05), (Kind.PAID_AGAIN, 0.05),
                        (Kind.WRONG_AMOUNT, 0.02), (Kind.ON_TIME, 0.83)):  # fmt: skip
        assert shares[kind] / len(orders) == pytest.approx(share, abs=0.01), kind
    nobody_late = PaymentMix(shares=Shares(late=0.0, repeated=0.0, paid_again=0.0,
                                           wrong_amount=0.0))  # fmt: skip
    assert {nobody_late.kind(o) for o in orders[:1000]} == {Kind.ON_TIME}
    assert mix.plan("a", 100, "USD") == PaymentMix(seed=7).plan("a", 100, "USD")  # ids too


def test_shares_are_checked() -> None:
    with pytest.raises(ValueError, match="late share"):
        Shares(late=1.5)
    with pytest.raises(ValueError, match="more than 1"):
        Shares(late=0.5, repeated=0.5, paid_again=0.1)


@pytest.mark.parametrize("kind", list(Kind))
def test_each_kind_plans_its_notifications(kind: Kind) -> None:
    planned, sends = _only(kind, seed=1).plan("s.o1", 500, "EUR")
    assert planned is kind
    first = sends[0]
    if kind is Kind.REPEATED:  # the very same notification twice
        assert sends == [first, Send(first.payment_id, first.webhook_id, 500, "EUR", Expect.SAME)]
    elif kind is Kind.PAID_AGAIN:  # the same payment, a new notification
        assert [(s.payment_id, s.expect) for s in sends] == [
            (first.payment_id, Expect.DECISION), (first.payment_id, Expect.SAME),
        ]  # fmt: skip
        assert sends[1].webhook_id != first.webhook_id
    elif kind is Kind.WRONG_AMOUNT:  # a wrong charge, then the right one as a new payment
        assert [(s.amount_cents, s.expect) for s in sends] == [
            (501, Expect.AMOUNT_MISMATCH), (500, Expect.DECISION),
        ]  # fmt: skip
        assert sends[1].payment_id != first.payment_id
    else:
        assert sends == [Send(first.payment_id, first.webhook_id, 500, "EUR",
                              Expect.LATE if kind is Kind.LATE else Expect.DECISION)]  # fmt: skip


def test_answers_are_judged_by_what_was_sent() -> None:
    def send(expect: Expect) -> Send:
        return Send("pay_1", "msg_1", 100, "USD", expect)

    paid = {"outcome": "paid", "reason": None, "late": False}
    late = {**paid, "late": True}
    expired = {"outcome": "refund_required", "reason": "reservation_expired", "late": False}
    mismatch = {**expired, "reason": "amount_mismatch"}
    assert answer_problem(send(Expect.DECISION), paid, None) is None
    assert answer_problem(send(Expect.DECISION), expired, None) is None
    assert answer_problem(send(Expect.DECISION), mismatch, None) is not None
    assert answer_problem(send(Expect.LATE), late, None) is None
    assert answer_problem(send(Expect.LATE), expired, None) is None
    assert answer_problem(send(Expect.LATE), paid, None) == (
        "a payment after the deadline paid, but not late"
    )
    assert answer_problem(send(Expect.AMOUNT_MISMATCH), mismatch, None) is None
    assert answer_problem(send(Expect.AMOUNT_MISMATCH), paid, None) is not None
    assert answer_problem(send(Expect.SAME), paid, paid) is None
    assert answer_problem(send(Expect.SAME), paid, late) is not None
    no_reason = {"outcome": "refund_required", "reason": None}
    assert answer_problem(send(Expect.DECISION), no_reason, None) == (
        "refund_required without a reason"
    )


def _service_url(service: Service) -> str:
    return str(service.client.make_url("")).rstrip("/")


def _only(kind: Kind, seed: int = 3) -> PaymentMix:
    shares = {"late": 0.0, "repeated": 0.0, "paid_again": 0.0, "wrong_amount": 0.0}
    if kind is not Kind.ON_TIME:
        shares[kind.value] = 1.0
    return PaymentMix(seed=seed, shares=Shares(**shares))


@pytest.mark.parametrize(
    ("kind", "outcomes"),
    [
        (Kind.ON_TIME, [("paid", None)]),
        (Kind.REPEATED, [("paid", None), ("paid", None)]),
        (Kind.PAID_AGAIN, [("paid", None), ("paid", None)]),
        (Kind.WRONG_AMOUNT, [("refund_required", "amount_mismatch"), ("paid", None)]),
        (Kind.LATE, [("paid", None)]),
    ],
)
async def test_the_payment_service_settles_an_order_as_planned(
    service: Service, kind: Kind, outcomes: list[tuple[str, str | None]]
) -> None:
    sale = await service.create_sale(reservation_ttl_s=1, stock=3)
    order = (await service.buy(sale["sale_id"], "u1")).body["order"]
    payments = PaymentService(_service_url(service), PAYMENT_SECRET, mix=_only(kind))
    started = time.time()
    try:
        settled = await payments.settle(order)
    finally:
        await payments.close()
    assert settled.kind is kind
    assert settled.problems == []
    assert [(a["outcome"], a["reason"]) for a in settled.answers] == outcomes
    assert settled.paid
    assert settled.late is (kind is Kind.LATE)
    if kind is Kind.LATE:  # sent after the deadline, and then only
        assert time.time() - started >= 1
    stats = await service.stats(sale["sale_id"])
    assert stats["paid"] == 1  # one payment paid, whatever was sent
    assert stats["paid_late"] == (1 if kind is Kind.LATE else 0)


async def test_a_late_payment_is_left_to_its_caller_unless_asked_for() -> None:
    payments = PaymentService("http://127.0.0.1:9", PAYMENT_SECRET, mix=_only(Kind.LATE))
    try:
        order = {"order_id": "s.o", "amount_cents": 1, "currency": "USD",
                 "expires_at": "2000-01-01T00:00:00.000Z"}  # fmt: skip
        settled = await payments.settle(order, kind=Kind.ON_TIME)  # nothing sent
    finally:
        await payments.close()
    assert settled.kind is Kind.LATE
    assert settled.answers == []


async def test_the_receiver_records_what_it_can_verify() -> None:
    receiver = EventReceiver(SECRET)
    url = await receiver.start()
    key = signing.parse_secret(SECRET)
    event = {"type": "order.paid", "timestamp": "2026-01-01T00:00:00.000Z",
             "data": {"order_id": "s.o1", "sale_id": "s", "sequence": 2}}  # fmt: skip
    body = orjson.dumps(event)
    try:
        async with aiohttp.ClientSession() as http:

            async def post(data: bytes, headers: dict[str, str]) -> int:
                async with http.post(url, data=data, headers=headers) as resp:
                    return resp.status

            good = signing.headers_for(key, "evt_1", int(time.time()), body)
            assert await post(body, good) == 200
            assert await post(body, good) == 200  # a repeat is recorded too
            forged = signing.headers_for(b"k" * 32, "evt_2", int(time.time()), body)
            assert await post(body, forged) == 400
            junk = b'{"type": "order.paid"}'
            assert (
                await post(junk, signing.headers_for(key, "evt_3", int(time.time()), junk)) == 400
            )
    finally:
        await receiver.stop()
    assert [(a.event_id, a.order_id, a.sale_id, a.sequence, a.type) for a in receiver.arrivals] == [
        ("evt_1", "s.o1", "s", 2, "order.paid"),
    ] * 2  # fmt: skip
    assert receiver.refused == 2


async def _payments_stored(service: Service, sale_id: str, count: int) -> None:
    pool = service.services.pool
    deadline = time.monotonic() + 15
    while await pool.fetchval("SELECT count(*) FROM payments WHERE sale_id = $1", sale_id) < count:
        assert time.monotonic() < deadline, "the payments never reached PostgreSQL"
        await asyncio.sleep(0.05)


async def test_the_payment_checks_fail_for_a_second_paid_payment_or_a_reason_missing(
    service: Service,
) -> None:
    sid = (await service.create_sale(stock=5))["sale_id"]
    one = (await service.buy(sid, "u1")).body["order"]["order_id"]
    two = (await service.buy(sid, "u2")).body["order"]["order_id"]
    assert (await service.pay(one, payment_id="pay_first")).body["payment"]["outcome"] == "paid"
    again = (await service.pay(one, payment_id="pay_second")).body["payment"]
    assert (again["outcome"], again["reason"]) == ("refund_required", "already_paid")
    wrong = (await service.pay(two, amount_cents=1)).body["payment"]
    assert wrong["reason"] == "amount_mismatch"
    await _payments_stored(service, sid, 3)
    await service.wait_for_postgres(sid)
    pool = service.services.pool

    def lines(checks: list[Any]) -> dict[str, bool]:
        return {c.name: c.ok for c in checks}

    assert lines(await payment_checks(pool, sid)) == {PAID_ONCE: True, REASONS: True}
    assert lines(await payment_checks(pool, sid, answered_without_reason=1)) == {
        PAID_ONCE: True, REASONS: False,
    }  # fmt: skip
    # an order paid twice over, as a payment decided twice would leave it
    await pool.execute(
        "UPDATE payments SET outcome = 'paid', reason = NULL WHERE payment_id = 'pay_second'"
    )
    found = await payment_checks(pool, sid)
    assert lines(found) == {PAID_ONCE: False, REASONS: True}
    assert f"{one} paid with 2" in found[0].detail
    # and an order not paid that has a paid payment
    await pool.execute("UPDATE payments SET order_id = $1 WHERE payment_id = 'pay_second'", two)
    found = await payment_checks(pool, sid)
    assert f"{two} reserved with 1" in found[0].detail
