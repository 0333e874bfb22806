"""The launch crowd: booked shoppers, F-code holders and late arrivals; the winners pay.

Each user is a sequence of shoppers: it takes an identity, acts as that shopper until the
shopper is done (won and paid or never paid, refused for good, or gave up), then takes the
next. Winners pay at the checkout, within the plan's ``checkout_s`` of their 201 (the crowd
plays the payment service: it posts the signed notifications the payment service would, with
its misbehaviours; the late payments the driver sends after the crowd), while the user goes on
with the next shopper: a winner's payment does not hold back the crowd, and no
pool of payers falls behind the buyers (leaving orders unpaid for want of payers rather than
of shoppers). Every answer is judged by checks.py; correct refusals count as successes,
anything else as a failure.
"""

from __future__ import annotations

import random
import time
from functools import partial
from typing import Any

import gevent
import orjson
from locust import task
from locust.contrib.fasthttp import FastHttpUser

from flashsale.fcodes.codes import new_code
from flashsale.payments.simulator import PATH as PAYMENTS_PATH
from flashsale.payments.simulator import Kind
from loadtest import checks
from loadtest.context import Crowd, crowd
from loadtest.pools import BUYERS, FCODE_HOLDERS, POLLERS, WALK_INS, Identity
from loadtest.records import BOOKING, BUY, PAY, SALE

MAX_FAILED_TRIES = 3  # a shopper whose requests fail gives up after this many
EMPTY_BODY = b"{}"  # sent as is: encoding {} for every click costs the generator CPU


class Shopper(FastHttpUser):
    abstract = True
    network_timeout = 30.0
    connection_timeout = 10.0
    role = "shopper"

    def on_start(self) -> None:
        self.crowd: Crowd = crowd()
        # a worker learns its index from the master only after connecting
        self.crowd.process_index = max(0, getattr(self.environment.runner, "worker_index", 0))
        self.plan = self.crowd.plan
        self.identity: Identity | None = None
        self.pause = 0.0
        self.retry_after: float | None = None  # the last answer's Retry-After

    def wait_time(self) -> float:
        return self.pause

    def sleep_until(self, moment: float) -> None:
        gevent.sleep(max(0.0, moment - time.time()))

    def send(
        self, method: str, path: str, name: str, judge: Any, role: str | None = None, **kwargs: Any
    ) -> checks.Judgement:
        """One request, judged; the answer is tallied and Locust told success or failure."""
        with self.client.request(method, path, name=name, catch_response=True, **kwargs) as resp:
            error = getattr(resp, "error", None)
            judgement: checks.Judgement = judge(resp.status_code, resp.content, error=error)
            if judgement.ok:
                resp.success()
            else:
                resp.failure(judgement.problem)
            self.retry_after = _retry_after(resp)
        self.crowd.recorder.answer(name, role or self.role, judgement.answer, judgement.problem)
        return judgement

    def won(self, judgement: checks.Judgement, lane: str) -> None:
        """A 201: record the order; this shopper is done buying. Most winners pay a moment
        later (entering payment details) while the next shopper already comes; the others
        never pay (their units stay reserved)."""
        assert self.identity is not None
        assert judgement.body is not None
        order = judgement.body["order"]
        order_id = order["order_id"]
        self.crowd.recorder.order("reserved", order_id, self.identity.user, lane)
        if random.random() < self.plan.pay_share:
            checkout = gevent.spawn_later(
                random.uniform(0.2, max(0.2, self.plan.checkout_s)),
                self.pay, self.identity, order, lane, self.role,
            )  # fmt: skip
            self.crowd.checkouts.add(checkout)
        self.identity = None

    def pay(self, identity: Identity, order: dict[str, Any], lane: str, role: str) -> None:
        """At the checkout: the payment service charges the order and notifies the engine, as
        the plan's mix says (simulator.PaymentMix): once, twice under one webhook-id, again
        under a new one, or a wrong amount first; a late payment is left to the driver, which
        sends it after the reservation expired. A notification that got no decision is sent
        again, under its webhook-id, a few times. The answers are tallied by kind."""
        order_id = order["order_id"]
        kind, sends = self.crowd.payments.plan(order_id, order["amount_cents"], order["currency"])
        if kind is Kind.LATE:
            self.crowd.recorder.order(
                "late", order_id, identity.user, lane, amount_cents=order["amount_cents"],
                currency=order["currency"], expires_at=order["expires_at"],
            )  # fmt: skip
            return
        previous: dict[str, Any] | None = None
        for send in sends:
            judge = partial(checks.judge_pay, order_id=order_id, send=send, previous=previous)
            for _ in range(MAX_FAILED_TRIES):
                body, headers = send.signed(self.crowd.payment_key, order_id)
                j = self.send("POST", PAYMENTS_PATH, PAY, judge, role=kind.value, data=body,
                              headers=headers)  # fmt: skip
                decided = (j.body or {}).get("payment") if j.answer.startswith("200") else None
                if isinstance(decided, dict):  # decided (and judged): never sent again
                    break
                gevent.sleep(0.5)
            else:
                return  # no decision: the payment service gives up on this order
            previous = decided
            if j.answer == "200 paid":
                self.crowd.recorder.order("paid", order_id, identity.user, lane)


def _retry_after(resp: Any) -> float | None:
    headers = getattr(resp, "headers", None)
    value = headers.get("Retry-After") if headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class BookedShopper(Shopper):
    """Booked fans at the opening second: buy, and in a queued sale wait their turn."""

    weight = 9
    role = "booked"

    def on_start(self) -> None:
        super().on_start()
        self.booked = True
        self.tries_left = self.failed_tries = 0
        self.waiting_in_queue = False
        self.sleep_until(self.plan.opens_at + random.uniform(-0.3, 0.2))  # a few click early

    def next_shopper(self) -> None:
        walk_in = random.random() < self.plan.walk_in_share
        self.identity = self.crowd.pool(WALK_INS if walk_in else BUYERS).take()
        self.booked = not walk_in
        self.role = "walk-in" if walk_in else "booked"
        self.tries_left = 1 + self.plan.sold_out_retries
        self.failed_tries = 0
        self.waiting_in_queue = False

    @task
    def act(self) -> None:
        if self.identity is None:
            self.next_shopper()
            if self.identity is None:  # an empty pool: nobody left to send
                self.pause = 1.0
                return
        if self.waiting_in_queue:
            self.look_at_queue()
        else:
            self.buy()

    def buy(self) -> None:
        assert self.identity is not None
        identity, booked = self.identity, self.booked

        def judge(status: int, content: bytes | None, error: object) -> checks.Judgement:
            return checks.judge_buy(
                status,
                content,
                user=identity.user,
                booked=booked,
                queued_sale=self.plan.queued,
                error=error,
            )

        path = f"/v1/sales/{self.plan.sale_id}/buy"
        j = self.send("POST", path, BUY, judge, data=EMPTY_BODY, headers=identity.headers)
        code = (j.body or {}).get("error")
        self.pause = 0.0
        if j.answer == "201" and j.ok:
            if random.random() < self.plan.double_click_share:
                self.click_again(path, judge)
            self.won(j, "public")
        elif j.answer == "202 queued":
            self.waiting_in_queue = True
            self.pause = min(self.retry_after or 1.0, self.plan.poll_interval_s)
        elif code == "sale_not_open":
            self.pause = random.uniform(0.05, 0.2)  # hammering the button before the start
        elif code == "rate_limited":
            self.pause = self.retry_after or 1.0  # told to slow down: a polite client does
        elif code == "sold_out" or not j.ok:
            if code == "sold_out":
                self.tries_left -= 1
            else:
                self.failed_tries += 1
            if self.tries_left <= 0 or self.failed_tries >= MAX_FAILED_TRIES:
                self.identity = None
            self.pause = random.uniform(0.2, 0.5)  # refreshing the page
        else:  # limit_reached, booking_required, admission_passed, sale_ended: done
            self.identity = None

    def click_again(self, path: str, judge: Any) -> None:
        """The winner presses buy again: with a limit of 1 only limit_reached is right."""
        assert self.identity is not None
        user = self.identity.user
        j = self.send("POST", path, BUY, judge, data=EMPTY_BODY, headers=self.identity.headers)
        if j.answer == "201" and j.body is not None:  # recorded: the verdict sees the excess
            self.crowd.recorder.order("reserved", j.body["order"]["order_id"], user, "public")

    def look_at_queue(self) -> None:
        assert self.identity is not None
        path = f"/v1/sales/{self.plan.sale_id}/bookings/me"
        j = self.send("GET", path, BOOKING, checks.judge_booking, headers=self.identity.headers)
        booking = (j.body or {}).get("booking") or {}
        state = booking.get("state")
        if state == "admitted":
            self.waiting_in_queue, self.pause = False, 0.0
        elif state == "waiting" or not j.ok:
            wait = booking.get("estimated_wait_s")
            wait = wait if isinstance(wait, int | float) and wait > 0 else 1.0
            self.pause = min(float(wait), self.plan.poll_interval_s)
        else:  # purchased or passed: nothing more for this shopper
            self.identity = None


class FcodeHolder(Shopper):
    """Holders of a priority code, one code each; they skip the queue."""

    fixed_count = 1  # set from the plan when Locust initialises
    role = "fcode"

    def on_start(self) -> None:
        super().on_start()
        self.failed_tries = 0
        self.sleep_until(self.plan.opens_at + random.uniform(-0.2, 0.3))

    @task
    def act(self) -> None:
        if self.identity is None:
            self.identity = self.crowd.pool(FCODE_HOLDERS).take()
            self.failed_tries = 0
            if self.identity is None:  # every code has been tried
                self.pause = 5.0
                return
        identity = self.identity

        def judge(status: int, content: bytes | None, error: object) -> checks.Judgement:
            return checks.judge_buy(
                status,
                content,
                user=identity.user,
                booked=False,
                queued_sale=self.plan.queued,
                campaign=self.plan.campaign,
                error=error,
            )

        path = f"/v1/sales/{self.plan.sale_id}/buy"
        j = self.send(
            "POST", path, BUY, judge, json={"fcode": identity.code}, headers=identity.headers
        )
        code = (j.body or {}).get("error")
        self.pause = 0.0
        if j.answer == "201" and j.ok:
            self.won(j, "fcode")
        elif code == "sale_not_open":
            self.pause = random.uniform(0.05, 0.2)
        elif not j.ok:
            self.failed_tries += 1
            self.pause = random.uniform(0.2, 0.5)
            if self.failed_tries >= MAX_FAILED_TRIES:
                self.identity = None
        else:  # sold_out (the code stays unused), fcode_used, throttled, ended
            self.identity = None


class Bot(Shopper):
    """A scalper's script: many booked accounts, no pause between clicks (from before the
    opening, ignoring Retry-After), and now and then a guessed F-code. The report shows what
    share of the units such bots got and how many of their requests were refused."""

    fixed_count = 0  # set from the plan when Locust initialises
    role = "bot"

    def on_start(self) -> None:
        super().on_start()
        self.sleep_until(self.plan.opens_at - 1.0)  # the script starts early

    @task
    def act(self) -> None:
        if self.identity is None:
            self.identity = self.crowd.pool(BUYERS).take()
            if self.identity is None:
                self.pause = 1.0
                return
        identity = self.identity
        path = f"/v1/sales/{self.plan.sale_id}/buy"
        self.pause = 0.0
        if random.random() < GUESS_SHARE:
            body = orjson.dumps({"fcode": new_code()})
            self.send("POST", path, BUY, checks.judge_guess, data=body, headers=identity.headers)
            return

        def judge(status: int, content: bytes | None, error: object) -> checks.Judgement:
            return checks.judge_buy(status, content, user=identity.user, booked=True,
                                    queued_sale=self.plan.queued, error=error)  # fmt: skip

        j = self.send("POST", path, BUY, judge, data=EMPTY_BODY, headers=identity.headers)
        code = (j.body or {}).get("error")
        if j.answer == "201" and j.ok:
            order_id = (j.body or {})["order"]["order_id"]
            self.crowd.recorder.order("reserved", order_id, identity.user, "bot")
            self.identity = None  # on to the next account
        elif code in ("limit_reached", "booking_required", "admission_passed"):
            self.identity = None
        elif j.answer == "202 queued":
            self.identity = None  # this account waits in the queue: try another


GUESS_SHARE = 0.1  # of a bot's requests that try a made-up F-code


class LateArrival(Shopper):
    """Booked fans who come after the opening and watch the sale and their booking."""

    weight = 1
    role = "late"

    def on_start(self) -> None:
        super().on_start()
        self.looks_left = 0
        self.sleep_until(self.plan.opens_at + random.uniform(0.5, 3.0))

    @task
    def look(self) -> None:
        if self.identity is None or self.looks_left <= 0:
            self.identity = self.crowd.pool(POLLERS).take()
            self.looks_left = random.randint(2, 6)
            if self.identity is None:
                self.pause = 1.0
                return
        self.looks_left -= 1
        sale_id = self.plan.sale_id

        def judge(status: int, content: bytes | None, error: object) -> checks.Judgement:
            return checks.judge_sale(status, content, sale_id=sale_id, error=error)

        self.send("GET", f"/v1/sales/{sale_id}", SALE, judge, headers=self.identity.headers)
        path = f"/v1/sales/{sale_id}/bookings/me"
        self.send("GET", path, BOOKING, checks.judge_booking, headers=self.identity.headers)
        self.pause = self.plan.poll_interval_s * random.uniform(0.5, 1.5)
