"""The launch crowd: booked shoppers, F-code holders and late arrivals; the winners pay.

Each user is a sequence of shoppers: it takes an identity, acts as that shopper until the
shopper is done (won and paid or never paid, refused for good, or gave up), then takes the
next (in a sale with an opening window, the crowd comes at the opening: each shopper keeps
their ticket and asks again when told, while the user brings the next; see BookedShopper).
Winners pay at the checkout, within the plan's ``checkout_s`` of their 201 (the crowd
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
from loadtest.pools import BOT_ACCOUNTS, BUYERS, FCODE_HOLDERS, POLLERS, WALK_INS, Identity
from loadtest.records import BOOKING, BUY, PAY, SALE

MAX_FAILED_TRIES = 3  # a shopper whose requests fail gives up after this many
# a shopper arriving this close to the window's draw would likely be answered after it: the
# crowd at the opening comes before
ARRIVALS_BEFORE_DRAW_S = 0.5
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
        judgement, self.retry_after = self.ask(method, path, name, judge, role, **kwargs)
        return judgement

    def ask(
        self, method: str, path: str, name: str, judge: Any, role: str | None = None, **kwargs: Any
    ) -> tuple[checks.Judgement, float | None]:
        """``send`` for a shopper of this user who waits on their own (an opening ticket):
        the judgement and the answer's Retry-After, which is that shopper's, not the user's."""
        with self.client.request(method, path, name=name, catch_response=True, **kwargs) as resp:
            error = getattr(resp, "error", None)
            judgement: checks.Judgement = judge(resp.status_code, resp.content, error=error)
            if judgement.ok:
                resp.success()
            else:
                resp.failure(judgement.problem)
            retry_after = _retry_after(resp)
        self.crowd.recorder.answer(name, role or self.role, judgement.answer, judgement.problem)
        return judgement, retry_after

    def won(self, judgement: checks.Judgement, lane: str, identity: Identity, role: str) -> None:
        """A 201: record the order; this shopper is done buying. Most winners pay a moment
        later (entering payment details) while the next shopper already comes; the others
        never pay (their units stay reserved)."""
        assert judgement.body is not None
        order = judgement.body["order"]
        order_id = order["order_id"]
        self.crowd.recorder.order("reserved", order_id, identity.user, lane)
        if random.random() < self.plan.pay_share:
            checkout = gevent.spawn_later(
                random.uniform(0.2, max(0.2, self.plan.checkout_s)),
                self.pay, identity, order, lane, role,
            )  # fmt: skip
            self.crowd.checkouts.add(checkout)
        if identity is self.identity:
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
    """Booked fans at the opening second: buy, and in a queued sale wait their turn.

    Each shopper is one account. In a sale with an opening window the crowd comes at the
    opening, as a launch's does: while the window is open the user brings its share of the
    opening crowd (the plan's ``opening_shoppers_per_user``, spread over the window), each
    shopper given a ticket keeping it and asking again when the service says (Retry-After, as
    the page would), on their own; after the window, or once its share came, the user brings
    a new shopper only when its own have all been served (a unit, or a refusal), as it does
    without a window. Without that, the window would hold one shopper per user against every
    account of the bots, and the shoppers arriving after it (at the end of the queue) would
    stand for the crowd of a launch that arrives at its opening."""

    weight = 9
    role = "booked"

    def on_start(self) -> None:
        super().on_start()
        self.booked = True
        self.tries_left = self.failed_tries = 0
        self.waiting_in_queue = False
        self.fans: list[gevent.Greenlet] = []  # this user's shoppers waiting with a ticket
        self.arrivals_end = self.plan.opening_draw_at - ARRIVALS_BEFORE_DRAW_S
        self.arrivals_left = self.plan.opening_shoppers_per_user  # still to come in the window
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
            self.fans = [fan for fan in self.fans if not fan.dead]
            if self.fans and (self.arrivals_left <= 0 or time.time() >= self.arrivals_end):
                self.pause = 0.2  # the crowd came at the opening: its shoppers are served first
                return
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
        self.crowd.recorder.account(self.role, identity.user)
        j = self.send("POST", path, BUY, judge, data=EMPTY_BODY, headers=identity.headers)
        code = (j.body or {}).get("error")
        self.pause = 0.0
        if j.answer == "201" and j.ok:
            self.won(j, "public", identity, self.role)  # recorded before anything may block
            if random.random() < self.plan.double_click_share:
                self.click_again(path, judge, identity)
        elif j.answer == "202 queued" and (j.body or {}).get("queue") == "opening":
            self.keep_ticket(identity)
            self.arrivals_left -= 1
            # the next shopper arrives: this user's are spread over what is left of the window
            spread = (self.arrivals_end - time.time()) / max(1, self.arrivals_left)
            self.pause = max(0.05, min(spread, 1.0))
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

    def on_stop(self) -> None:
        gevent.killall(getattr(self, "fans", []), block=False)  # they share its client

    def keep_ticket(self, identity: Identity) -> None:
        """The shopper holds an opening ticket: they wait for their turn on their own."""
        fan = gevent.spawn(self.wait_for_turn, identity, self.retry_after)
        self.fans.append(fan)
        self.crowd.fans.add(fan)
        self.identity = None

    def wait_for_turn(self, identity: Identity, retry_after: float | None) -> None:
        """A shopper with an opening ticket asks again when told (up to half a second late: a
        person reading the page), until a unit or a refusal for good."""
        path = f"/v1/sales/{self.plan.sale_id}/buy"
        judge = partial(checks.judge_buy, user=identity.user, booked=True, queued_sale=True)
        tries_left, failed_tries = 1 + self.plan.sold_out_retries, 0
        while True:
            gevent.sleep((retry_after or 1.0) + random.uniform(0.0, 0.5))
            j, retry_after = self.ask("POST", path, BUY, judge, role="booked", data=EMPTY_BODY,
                                      headers=identity.headers)  # fmt: skip
            code = (j.body or {}).get("error")
            if j.answer == "201" and j.ok:
                self.won(j, "public", identity, "booked")
                return
            if j.answer == "202 queued" or code == "rate_limited":
                continue  # still waiting (or too eager): as the answer says
            if code == "sold_out" or not j.ok:
                if code == "sold_out":
                    tries_left -= 1
                else:
                    failed_tries += 1
                if tries_left <= 0 or failed_tries >= MAX_FAILED_TRIES:
                    return
                retry_after = random.uniform(0.2, 0.5)  # refreshing the page
                continue
            return  # limit_reached, admission_passed, sale_ended: done

    def click_again(self, path: str, judge: Any, identity: Identity) -> None:
        """The winner presses buy again: with a limit of 1 only limit_reached is right."""
        user = identity.user
        j = self.send("POST", path, BUY, judge, data=EMPTY_BODY, headers=identity.headers)
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
            self.won(j, "fcode", identity, self.role)
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
    """A scalper's script: a fixed set of booked accounts of its own (the plan's
    ``bot_accounts``), gone through in turn for the whole sale with BOT_IN_FLIGHT requests in
    flight and no pause between clicks (from a second before the opening, ignoring
    Retry-After and any ticket), and now and then a guessed F-code. An account that won, or
    can never win (limit_reached), drops out of the turn. The report shows the units such bots
    got per account against the humans' and how many of their requests were refused."""

    fixed_count = 0  # set from the plan when Locust initialises
    role = "bot"

    def on_start(self) -> None:
        super().on_start()
        self.accounts = self.crowd.pool(BOT_ACCOUNTS).take_own(self.plan.bot_accounts)
        self.turn = 0
        self.sleep_until(self.plan.opens_at - 1.0)  # the script starts early
        self.helpers = [gevent.spawn(self.hammer)  # the task is one more
                        for _ in range(min(BOT_IN_FLIGHT, len(self.accounts)) - 1)]  # fmt: skip
        for helper in self.helpers:
            self.crowd.fans.add(helper)

    def on_stop(self) -> None:
        gevent.killall(getattr(self, "helpers", []), block=False)  # they share its client

    def hammer(self) -> None:
        """One more request of this script in flight, for the whole sale."""
        while True:
            self.act()
            gevent.sleep(self.pause)

    @task
    def act(self) -> None:
        if not self.accounts:  # every account won or is done (or the pool had none left)
            self.pause = 1.0
            return
        self.pause = 0.0
        self.turn = (self.turn + 1) % len(self.accounts)
        identity = self.accounts[self.turn]
        path = f"/v1/sales/{self.plan.sale_id}/buy"
        self.crowd.recorder.account(self.role, identity.user)
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
            self._drop(identity)  # the limit is reached: no use asking again
        elif code in ("limit_reached", "booking_required"):
            self._drop(identity)
        # anything else (a ticket, a place in a queue, sold_out, rate_limited,
        # admission_passed): the next account at once, this one again on its turn

    def _drop(self, identity: Identity) -> None:
        if identity in self.accounts:  # another request in flight may have dropped it
            self.accounts.remove(identity)


GUESS_SHARE = 0.1  # of a bot's requests that try a made-up F-code
BOT_IN_FLIGHT = 4  # a script keeps this many requests in flight, each to its next account


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
