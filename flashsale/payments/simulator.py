"""The payment service's side of the hand-off, for the demo, rehearsals and tests: it signs
``payment.succeeded`` notifications as Standard Webhooks and posts them to flashsale, and it
misbehaves as real payment services do.

``signed_notification`` builds one (body and headers, no I/O) for any HTTP client.

``PaymentMix`` decides, for each order, what the payment service does (``Kind``): pays in time;
pays late, after the reservation expired; delivers the same notification twice (one
webhook-id); notifies the same payment again under a new webhook-id; or first charges a wrong
amount, then the right one. The choice is a function of the seed and the order id alone, so a
run is reproducible whatever order the orders come in, and every id it makes is derived the same
way. ``plan`` lists the notifications (``Send``) with what each answer must be;
``answer_problem`` judges an answer against that.

``PaymentService`` posts them with aiohttp (``settle`` for a whole order's plan, ``pay`` for one
payment) and, as a payment service does, sends a notification again under the same webhook-id
when the answer was not a decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import aiohttp
import orjson

from flashsale.payments.notifications import EVENT_TYPE
from flashsale.webhooks import signing

PATH = "/v1/payments/events"
# a late payment is sent this long after the order's deadline (by this machine's clock)
LATE_AFTER_S = 1.0


def new_id(prefix: str) -> str:
    """A fresh id such as a payment service gives: ``pay_...``, ``msg_...``."""
    return f"{prefix}_{secrets.token_hex(12)}"


def signed_notification(
    key: bytes,
    order_id: str,
    amount_cents: int,
    currency: str,
    *,
    payment_id: str | None = None,
    webhook_id: str | None = None,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a notification that ``order_id`` was paid."""
    body = orjson.dumps({
        "type": EVENT_TYPE,
        "data": {
            "order_id": order_id,
            "payment_id": payment_id or new_id("pay"),
            "amount_cents": amount_cents,
            "currency": currency,
        },
    })  # fmt: skip
    stamp = int(time.time()) if timestamp is None else timestamp
    headers = signing.headers_for(key, webhook_id or new_id("msg"), stamp, body)
    return body, {**headers, "Content-Type": "application/json"}


class Kind(StrEnum):
    """What the payment service does with one order."""

    ON_TIME = "on_time"  # one notification, within the reservation
    LATE = "late"  # one notification, after the reservation expired
    REPEATED = "repeated"  # the same notification delivered twice: one webhook-id
    PAID_AGAIN = "paid_again"  # the same payment notified again under a new webhook-id
    WRONG_AMOUNT = "wrong_amount"  # a charge of the wrong amount, then the right one


class Expect(StrEnum):
    """What the answer to one notification must be."""

    DECISION = "decision"  # paid; or refund_required reservation_expired (a slow payer)
    LATE = "late"  # paid late; or refund_required reservation_expired (no unit to take)
    SAME = "same"  # exactly the answer to the notification before (the same payment)
    AMOUNT_MISMATCH = "amount_mismatch"  # refund_required, reason amount_mismatch


@dataclass(frozen=True)
class Shares:
    """Of the orders paid, the share of each misbehaviour; the rest are paid in time."""

    late: float = 0.05
    repeated: float = 0.05
    paid_again: float = 0.05
    wrong_amount: float = 0.02

    def __post_init__(self) -> None:
        values = asdict(self)
        for name, value in values.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"the {name.replace('_', ' ')} share must be from 0 to 1")
        if sum(values.values()) > 1.0 + 1e-9:
            raise ValueError("the payment shares add up to more than 1")

    def to_json(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Send:
    """One notification of a plan."""

    payment_id: str
    webhook_id: str
    amount_cents: int
    currency: str
    expect: Expect

    def signed(self, key: bytes, order_id: str) -> tuple[bytes, dict[str, str]]:
        """Body and headers, signed now (a redelivery is signed afresh, as services do)."""
        return signed_notification(
            key, order_id, self.amount_cents, self.currency,
            payment_id=self.payment_id, webhook_id=self.webhook_id,
        )  # fmt: skip


@dataclass(frozen=True)
class PaymentMix:
    """Which orders the payment service pays how, from ``seed`` and the order id."""

    seed: int = 7
    shares: Shares = field(default_factory=Shares)

    def _digest(self, *parts: object) -> bytes:
        text = "|".join(str(p) for p in (self.seed, *parts))
        return hashlib.sha256(text.encode()).digest()

    def kind(self, order_id: str) -> Kind:
        draw = int.from_bytes(self._digest("kind", order_id)[:8], "big") / 2**64
        s = self.shares
        for kind, share in (
            (Kind.LATE, s.late),
            (Kind.REPEATED, s.repeated),
            (Kind.PAID_AGAIN, s.paid_again),
            (Kind.WRONG_AMOUNT, s.wrong_amount),
        ):
            if draw < share:
                return kind
            draw -= share
        return Kind.ON_TIME

    def _id(self, prefix: str, order_id: str, n: int) -> str:
        return f"{prefix}_{self._digest(prefix, order_id, n)[:12].hex()}"

    def plan(self, order_id: str, amount_cents: int, currency: str) -> tuple[Kind, list[Send]]:
        """What the payment service sends for an order costing ``amount_cents``, in order."""
        kind = self.kind(order_id)
        pay = Send(
            self._id("pay", order_id, 0), self._id("msg", order_id, 0), amount_cents, currency,
            Expect.LATE if kind is Kind.LATE else Expect.DECISION,
        )  # fmt: skip
        if kind is Kind.REPEATED:
            return kind, [pay, replace(pay, expect=Expect.SAME)]
        if kind is Kind.PAID_AGAIN:
            again = replace(pay, webhook_id=self._id("msg", order_id, 1), expect=Expect.SAME)
            return kind, [pay, again]
        if kind is Kind.WRONG_AMOUNT:
            wrong = replace(pay, amount_cents=amount_cents + 1, expect=Expect.AMOUNT_MISMATCH)
            right = replace(pay, payment_id=self._id("pay", order_id, 1),
                            webhook_id=self._id("msg", order_id, 1))  # fmt: skip
            return kind, [wrong, right]
        return kind, [pay]


def answer_problem(
    send: Send, payment: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> str | None:
    """Why ``payment`` (the answer's ``"payment"``) is not what ``send`` must get; None if it
    is. ``previous`` is the answer to the notification before it in the plan. The problems
    are categories (no ids), so they can be counted."""
    outcome, reason = payment.get("outcome"), payment.get("reason")
    if send.expect is Expect.SAME:
        if previous is None or dict(payment) != dict(previous):
            return "the same payment answered differently the second time"
        return None
    if outcome == "refund_required" and not reason:
        return "refund_required without a reason"
    if send.expect is Expect.AMOUNT_MISMATCH:
        if outcome != "refund_required" or reason != "amount_mismatch":
            return f"a wrong amount decided {outcome} {reason}"
        return None
    if outcome == "refund_required" and reason == "reservation_expired":
        return None  # slower than the reservation, and no unit may be taken
    if outcome != "paid" or reason is not None:
        return f"payment decided {outcome} {reason}"
    if send.expect is Expect.LATE and payment.get("late") is not True:
        return "a payment after the deadline paid, but not late"
    return None


def deadline_s(order: Mapping[str, Any]) -> float:
    """The order's ``expires_at`` as Unix seconds."""
    return datetime.fromisoformat(str(order["expires_at"])).timestamp()


@dataclass
class Settlement:
    """What the payment service did for one order and what it was answered."""

    order_id: str
    kind: Kind
    answers: list[dict[str, Any]] = field(default_factory=list)  # the "payment" of each
    problems: list[str] = field(default_factory=list)

    @property
    def paid(self) -> bool:
        return any(a.get("outcome") == "paid" for a in self.answers)

    @property
    def late(self) -> bool:
        return any(a.get("outcome") == "paid" and a.get("late") for a in self.answers)


class PaymentService:
    """Pays orders at a flashsale service (``base_url``), signing with ``secret``
    (``whsec_...``), misbehaving as ``mix`` says."""

    def __init__(
        self,
        base_url: str,
        secret: str,
        *,
        session: aiohttp.ClientSession | None = None,
        mix: PaymentMix | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + PATH
        self.key = signing.parse_secret(secret)
        self.mix = mix or PaymentMix()
        self._session = session
        self._own_session = session is None

    async def settle(self, order: Mapping[str, Any], kind: Kind | None = None) -> Settlement:
        """Pay ``order`` (a 201's ``order``: ``order_id``, ``amount_cents``, ``currency``,
        ``expires_at``) as the mix plans it, a late one after its deadline; each answer is
        judged (``answer_problem``). ``kind`` given, only an order of that kind is paid (the
        others are returned untouched): a caller that pays the late ones on its own."""
        order_id = str(order["order_id"])
        planned, sends = self.mix.plan(order_id, int(order["amount_cents"]), str(order["currency"]))
        done = Settlement(order_id, planned)
        if kind is not None and planned is not kind:
            return done
        if planned is Kind.LATE:
            await asyncio.sleep(max(0.0, deadline_s(order) + LATE_AFTER_S - time.time()))
        previous: dict[str, Any] | None = None
        for send in sends:
            try:
                payment = await self._deliver(order_id, send)
            except PaymentRefused as exc:
                done.problems.append(f"notification refused: HTTP {exc.status}")
                break
            if (problem := answer_problem(send, payment, previous)) is not None:
                done.problems.append(problem)
            done.answers.append(payment)
            previous = payment
        return done

    async def pay(
        self,
        order_id: str,
        amount_cents: int,
        currency: str,
        *,
        payment_id: str | None = None,
        attempts: int = 5,
    ) -> dict[str, Any]:
        """Notify that ``order_id`` was paid; the decision (``{"outcome", "reason", ...}``).
        A 5xx or a lost connection is tried again under the same webhook-id, freshly signed;
        a 4xx raises ``PaymentRefused``."""
        send = Send(payment_id or new_id("pay"), new_id("msg"), amount_cents, currency,
                    Expect.DECISION)  # fmt: skip
        return await self._deliver(order_id, send, attempts=attempts)

    async def _deliver(self, order_id: str, send: Send, *, attempts: int = 5) -> dict[str, Any]:
        pause_s = 0.2
        for attempt in range(1, attempts + 1):
            body, headers = send.signed(self.key, order_id)
            try:
                async with self._client().post(self.url, data=body, headers=headers) as resp:
                    answer: dict[str, Any] = await resp.json(content_type=None)
                    if resp.status == 200:
                        payment: dict[str, Any] = answer["payment"]
                        return payment
                    if resp.status < 500:
                        raise PaymentRefused(resp.status, answer)
            except (aiohttp.ClientConnectionError, TimeoutError):
                if attempt == attempts:
                    raise
            await asyncio.sleep(pause_s)
            pause_s *= 2
        raise PaymentRefused(503, {"error": "unavailable", "message": "no decision"})

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None


class PaymentRefused(Exception):
    """flashsale refused the notification (a signature or format problem) or never decided it."""

    def __init__(self, status: int, answer: dict[str, Any]) -> None:
        self.status = status
        self.answer = answer
        super().__init__(f"{status}: {answer.get('error')}: {answer.get('message')}")
