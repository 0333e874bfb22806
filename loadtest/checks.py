"""Judging the service's answers by their bodies, not just their statuses.

A correct answer is one the API promises for the situation: 201 with a well-formed order, 202
``queued`` in a queued sale, 409 ``sold_out`` and its kin. A 5xx, a body that is not JSON, or a
body without the fields the API documents is a failure. Failure messages are categories
("HTTP 503 unavailable"), never per-request details, so Locust's failure table groups them.

Pure functions over (status, body bytes): no Locust, no I/O, so they are tested directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flashsale.payments.simulator import Expect, Send, answer_problem

SALE_STATUSES = frozenset({"scheduled", "open", "paused", "sold_out", "ended"})
BOOKING_STATES = frozenset({"waiting", "admitted", "purchased", "passed"})
# the refusals a public buyer may correctly get; admission_passed only in a queued sale
PUBLIC_REFUSALS = frozenset({"sold_out", "limit_reached", "sale_not_open"})
# fcode_lane_closed: the F-code units nobody redeemed have passed to the public
FCODE_REFUSALS = frozenset({"sold_out", "fcode_used", "sale_not_open", "fcode_lane_closed"})
GUESS_REFUSALS = frozenset({
    "fcode_invalid", "fcode_throttled", "rate_limited", "sold_out", "sale_not_open", "sale_ended",
    "fcode_lane_closed",
})  # fmt: skip


@dataclass(frozen=True)
class Judgement:
    answer: str  # what came back, for the tally: "201", "409 sold_out", "202 queued"
    problem: str | None = None  # why it is a failure; None when the answer is correct
    body: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _read(status: int, content: bytes | None, error: object = None) -> Judgement:
    """The body as a JSON object, or the failure that prevents judging it further."""
    if status == 0:
        kind = type(error).__name__ if error is not None else "no answer"
        return Judgement(f"connection error {kind}", f"connection error: {kind}")
    try:
        body = json.loads(content or b"")
    except ValueError:
        return Judgement(f"{status} non-JSON", f"non-JSON body (HTTP {status})")
    if not isinstance(body, dict):
        return Judgement(f"{status} non-JSON", f"JSON body is not an object (HTTP {status})")
    if status >= 400:
        code = body.get("error")
        if not isinstance(code, str):
            return Judgement(f"{status} ?", f"HTTP {status} without an error code", body)
        answer = f"{status} {code}"
        if status >= 500:
            return Judgement(answer, f"HTTP {answer}", body)
        return Judgement(answer, None, body)
    return Judgement(str(status), None, body)


def _unexpected(j: Judgement) -> Judgement:
    return Judgement(j.answer, j.problem or f"unexpected HTTP {j.answer}", j.body)


def _bad(j: Judgement, problem: str) -> Judgement:
    return Judgement(j.answer, problem, j.body)


def judge_buy(
    status: int,
    content: bytes | None,
    *,
    user: str,
    booked: bool,
    queued_sale: bool,
    campaign: str | None = None,
    error: object = None,
) -> Judgement:
    """A buy: public (``campaign`` None) or with an F-code of ``campaign``."""
    j = _read(status, content, error)
    if j.problem or j.body is None:
        return j
    code = j.body.get("error")
    if status == 201:
        order = j.body.get("order")
        if not isinstance(order, dict) or not isinstance(order.get("order_id"), str):
            return _bad(j, "201 without order.order_id")
        if order.get("status") != "reserved" or order.get("quantity") != 1:
            return _bad(j, "201 order not reserved for 1 unit")
        if order.get("user_id") != user:
            return _bad(j, "201 order of another user")
        if not isinstance(order.get("expires_at"), str):
            return _bad(j, "201 order without expires_at")
        if campaign is not None and order.get("campaign") != campaign:
            return _bad(j, "201 F-code order without its campaign")
        if campaign is None and not booked:
            return _bad(j, "201 for an unbooked shopper (booking is required)")
        return j
    if status == 202:
        if campaign is not None or not queued_sale:
            return _bad(j, "202 where no queue applies")
        position = j.body.get("position")
        # an opening window's ticket has no place until the window's draw: position null
        drawing = position is None and j.body.get("queue") == "opening"
        placed = isinstance(position, int) or drawing
        if j.body.get("status") != "queued" or not placed:
            return _bad(j, "202 without status queued and a position")
        return Judgement("202 queued", None, j.body)
    if status == 410 and code == "sale_ended":
        return j
    if status == 429 and code == "rate_limited":  # clicking faster than the sale allows
        return j
    if campaign is not None:
        if (status == 409 and code in FCODE_REFUSALS) or (
            status == 429 and code == "fcode_throttled"
        ):
            return j
        return _unexpected(j)
    if status == 409 and (code in PUBLIC_REFUSALS or (queued_sale and code == "admission_passed")):
        return j
    if status == 403 and code == "booking_required":
        return j if not booked else _bad(j, "booking_required for a booked shopper")
    return _unexpected(j)


def judge_guess(status: int, content: bytes | None, error: object = None) -> Judgement:
    """A made-up F-code: it must be refused, as invalid, throttled or for the sale's state."""
    j = _read(status, content, error)
    if j.problem or j.body is None:
        return j
    code = j.body.get("error")
    if status == 201:
        return _bad(j, "201 for a guessed F-code")
    if code in GUESS_REFUSALS and status in (409, 410, 429):
        return j
    return _unexpected(j)


def judge_pay(
    status: int,
    content: bytes | None,
    *,
    order_id: str,
    send: Send | None = None,
    previous: dict[str, Any] | None = None,
    error: object = None,
) -> Judgement:
    """A payment notification's answer: ``send`` is what the payment service sent (by default
    a payment in time of the right amount), ``previous`` the answer to the notification
    before it, which a repeat must get again (simulator.answer_problem)."""
    j = _read(status, content, error)
    if j.problem or j.body is None:
        return j
    if status != 200:
        return _unexpected(j)
    payment = j.body.get("payment")
    if not isinstance(payment, dict) or payment.get("order_id") != order_id:
        return _bad(j, "200 without the payment")
    outcome, reason = payment.get("outcome"), payment.get("reason")
    answer = "200 paid" if outcome == "paid" else f"200 {outcome} {reason}"
    expected = send or Send("", "", 0, "", Expect.DECISION)
    problem = answer_problem(expected, payment, previous)
    return Judgement(answer, problem, j.body)


def judge_sale(
    status: int, content: bytes | None, *, sale_id: str, error: object = None
) -> Judgement:
    j = _read(status, content, error)
    if j.problem or j.body is None:
        return j
    if status != 200:
        return _unexpected(j)
    sale = j.body.get("sale")
    if not isinstance(sale, dict) or sale.get("sale_id") != sale_id:
        return _bad(j, "200 without the sale")
    available = sale.get("available")
    if not isinstance(available, int) or available < 0:
        return _bad(j, "sale without a count of available units")
    if sale.get("status") not in SALE_STATUSES:
        return _bad(j, "sale with an unknown status")
    return Judgement(f"200 {sale['status']}", None, j.body)


def judge_booking(status: int, content: bytes | None, *, error: object = None) -> Judgement:
    """``GET /bookings/me`` of a shopper who is booked: 404 would be a lost booking."""
    j = _read(status, content, error)
    if j.problem or j.body is None:
        return j
    if status != 200:
        return _unexpected(j)
    booking = j.body.get("booking")
    if not isinstance(booking, dict) or not isinstance(booking.get("booking_no"), int):
        return _bad(j, "200 without booking.booking_no")
    if booking.get("state") not in BOOKING_STATES:
        return _bad(j, "booking with an unknown state")
    return Judgement(f"200 {booking['state']}", None, j.body)
