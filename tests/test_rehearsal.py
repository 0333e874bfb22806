"""The launch-day rehearsal (scripts/launch-rehearsal, loadtest/): a small launch end to end,
and the pieces whose mistakes would quietly skew it."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import orjson
import pytest
import redis as redis_sync

from flashsale.booking.lottery import Draw
from flashsale.handoff_checks import (
    EVENTS,
    PAID_ONCE,
    REASONS,
    UNITS,
    ExpectedEvents,
    check_events,
    units_check,
)
from flashsale.outbox.receiver import Arrival
from flashsale.payments.simulator import Expect, Send
from flashsale.settings import Settings
from loadtest import checks
from loadtest.rehearsal.identities import choose_bookers, lottery_booking_no
from loadtest.rehearsal.options import parse_args, sizes
from tests.helpers import flashsale_env, whole_machine

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REQUIRED = b'{"error": "booking_required", "message": "book first"}'


@whole_machine
@pytest.mark.timeout(240)
def test_small_rehearsal_sells_out_and_the_verdict_holds(
    settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "rehearsal"
    # the suite runs from the installed venv already (CI runs ./scripts/install first)
    done = subprocess.run(
        # a window of 3 s rather than the preset's 10 (test_rehearsal_report checks the presets):
        # the same tickets, draw and fairness figures, without lengthening the test
        [str(REPO / "scripts" / "launch-rehearsal"), "--no-install", "--preset", "small",
         "--opening-window-ms", "3000", "--out", str(out)],
        cwd=REPO, env=flashsale_env(settings), capture_output=True, text=True, timeout=200,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    report = json.loads((out / "report.json").read_text())
    assert report["violations"] == []
    assert report["stock"] == 2000
    assert report["sold"] == report["stock"]
    assert report["sellout_s"] > 0
    assert report["buys_per_s"] > 0
    assert report["requests_per_s"] > 0
    assert report["p99_ms"] > 0
    assert report["failures"] == 0, report["errors"]
    buy = report["answers"]["POST /v1/sales/{id}/buy"]
    bots = report["bots"]
    assert buy["booked: 201"] + buy.get("fcode: 201", 0) + bots["units"] == report["stock"]
    # the scalpers' scripts ran, hammered, guessed codes and were refused for it
    assert bots["users"] == 10
    assert bots["units"] == buy.get("bot: 201", 0)
    assert bots["refused"] > 0
    assert buy.get("bot: 201", 0) + bots["refused"] <= bots["requests"]
    # the sale opened with a window: tickets, then a draw; each bot went
    # through its own 20 accounts, each shopper had one; the units won per account are
    # measured and printed beside the window
    assert report["settings"]["opening_window_ms"] == 3000
    assert buy["booked: 202 queued"] > 0
    a = bots["per_account"]
    assert a["opening_window_ms"] == 3000
    assert a["bot_accounts"] == a["bot_accounts_planned"] == 200
    assert report["crowd"]["pools"]["bot_accounts"]["taken"] == 200
    assert a["bot_units"] == bots["units"]
    assert a["human_units"] == buy["booked: 201"]
    assert a["human_accounts"] >= a["human_units"]
    # no pause, four requests in flight, tickets ignored: the scripts asked again and again
    # (their accounts, spread over twenty each, are not always fast enough for a 429)
    assert bots["requests"] > 2 * a["bot_accounts"]
    assert a["ratio"] == pytest.approx(
        (a["bot_units"] / (a["bot_units"] + a["human_units"]))
        / (a["bot_accounts"] / (a["bot_accounts"] + a["human_accounts"])), abs=1e-3
    )  # fmt: skip
    fairness = f"units per account, bots against humans (window 3,000 ms): ratio {a['ratio']:.2f}x"
    assert fairness in done.stdout
    assert report["postgres"]["pg_caught_up_after_sellout_s"] is not None
    assert (out / "chart.png").read_bytes()[:8] == PNG_SIGNATURE
    # the checkout hand-off: the payment service misbehaved in every way it knows ...
    pay = report["answers"]["POST /v1/payments/events"]
    assert pay.get("repeated: 200 paid", 0) > 0
    assert pay.get("paid_again: 200 paid", 0) > 0
    assert pay.get("wrong_amount: 200 refund_required amount_mismatch", 0) > 0
    late = report["late_payments"]
    assert late["orders"] > 0
    assert late["problems"] == {}
    assert sum(late["answers"].values()) == late["orders"]
    # ... every event reached the rehearsal's receiver, in order, soon after its change ...
    events = report["events"]
    assert events["source"] == "receiver"
    assert events["arrived"] == events["expected"] > 2 * report["stock"]
    assert events["missing"] == events["out_of_order"] == events["conflicting"] == 0
    assert events["gap_s"] is not None
    assert events["lag_max_s"] is not None
    assert events["their_events_delivered_after_s"] is not None
    # ... and each check is a line of the report and of report.json
    assert [(c["check"], c["ok"]) for c in report["checks"]] == [
        (name, True) for name in (PAID_ONCE, REASONS, EVENTS, UNITS)
    ]
    for name in (PAID_ONCE, REASONS, EVENTS, UNITS):
        assert f"check: {name}: ok (" in done.stdout
    assert "the last event delivered at" in done.stdout
    assert "verdict: all invariants hold" in done.stdout
    # the headline is the sale window, the whole run second; one bottleneck call, with the
    # CPU of every component on this machine as its evidence; every pool used from the front
    assert report["headline"]["window"] == "from the opening second to the last unit"
    assert report["timing"]["clock"].startswith("the service's")
    assert report["p99_ms"] == report["headline"]["buy_p99_ms"]
    assert report["failed_expectations"] == []
    assert report["bottleneck"]["component"] in (
        "service", "load generator", "redis", "postgres", "none", "unknown"
    )  # fmt: skip
    assert report["bottleneck"]["evidence"]
    assert {"service", "load generator", "redis", "postgres"} <= set(
        report["cpu"]["sale_window"]["cores"]
    )
    assert "generator_bound" not in report  # one call, not two that may disagree
    assert "locust_cpu_warning" not in report
    codes = report["crowd"]["pools"]["fcode_holders"]
    assert codes["taken"] == codes["size"] == report["settings"]["codes"]
    assert report["locust"]["why_they_differ"]
    assert "HEADLINE, the sale window" in done.stdout
    # the rehearsal ran in this test's stores, which it did not make: it removed its sale
    assert report["settings"]["key_prefix"] == settings.key_prefix
    assert f"deleted sale {report['sale_id']}:" in done.stdout
    client = redis_sync.Redis.from_url(settings.redis_url)
    try:
        pattern = f"{settings.key_prefix}:{{{report['sale_id']}}}:*"
        left = list(client.scan_iter(match=pattern, count=10_000))
        assert not left, "the sale's keys are removed"
    finally:
        client.close()
    assert not (out / "pool").exists(), "the tokens and F-codes of the run are removed"


def test_the_crowd_finds_the_front_of_a_lottery_queue() -> None:
    """The rehearsal sends the lottery's first ranks first: the inverse of the service's draw."""
    rng = random.Random(3)
    for n in (1, 2, 3, 17, 1000, 7_500_000):
        draw = Draw("seed-x", n)
        for _ in range(50):
            rank = rng.randint(1, n)
            assert draw.rank(lottery_booking_no("seed-x", n, rank)) == rank


def _order(user: str = "u1", **fields: object) -> bytes:
    order = {"order_id": "o1", "user_id": user, "status": "reserved", "quantity": 1,
             "expires_at": "2026-01-01T00:00:00.000Z", **fields}  # fmt: skip
    return json.dumps({"order": order}).encode()


@pytest.mark.parametrize(
    ("status", "body", "booked", "problem"),
    [
        (201, _order(), True, None),
        (409, b'{"error": "sold_out", "message": "x"}', True, None),
        (403, REQUIRED, False, None),
        (403, REQUIRED, True, "booking_required for a booked shopper"),
        (201, _order(), False, "201 for an unbooked shopper (booking is required)"),
        (201, _order(user="u2"), True, "201 order of another user"),
        (201, b'{"order": {}}', True, "201 without order.order_id"),
        (202, b'{"status": "queued", "position": 3}', True, "202 where no queue applies"),
        (409, b'{"error": "admission_passed", "message": "x"}', True,
         "unexpected HTTP 409 admission_passed"),
        (503, b'{"error": "unavailable", "message": "x"}', True, "HTTP 503 unavailable"),
        (502, b"<html>bad gateway</html>", True, "non-JSON body (HTTP 502)"),
        (0, None, True, "connection error: no answer"),
    ],
)  # fmt: skip
def test_buy_answers_are_judged_by_their_bodies(
    status: int, body: bytes | None, booked: bool, problem: str | None
) -> None:
    judgement = checks.judge_buy(status, body, user="u1", booked=booked, queued_sale=False)
    assert judgement.problem == problem


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"status": "queued", "queue": "opening", "ticket": 7, "position": None}, None),
        ({"status": "queued", "queue": "opening", "ticket": 7, "position": 12}, None),
        ({"status": "queued", "position": 3}, None),  # a booking queue's place
        ({"status": "queued", "position": None}, "202 without status queued and a position"),
        ({"status": "open", "queue": "opening", "position": None},
         "202 without status queued and a position"),
    ],
)  # fmt: skip
def test_an_opening_ticket_has_no_place_until_the_draw(
    body: dict[str, object], problem: str | None
) -> None:
    judgement = checks.judge_buy(202, orjson.dumps(body), user="u1", booked=True,
                                 queued_sale=True)  # fmt: skip
    assert judgement.problem == problem
    assert checks.judge_buy(409, b'{"error": "admission_passed", "message": "x"}', user="u1",
                            booked=True, queued_sale=True).ok  # fmt: skip


def test_an_fcode_after_the_release_is_refused_correctly() -> None:
    closed = b'{"error": "fcode_lane_closed", "message": "x"}'
    assert checks.judge_guess(409, closed).ok
    assert checks.judge_buy(409, closed, user="u1", booked=False, queued_sale=False,
                            campaign="c").ok  # fmt: skip
    # a public buy is never told so
    assert not checks.judge_buy(409, closed, user="u1", booked=True, queued_sale=False).ok


def test_the_bots_accounts_are_booked_and_nobody_elses() -> None:
    """Every bot account is a booked shopper, none among the buyers or late arrivals, in
    an arrival sale and in a queue (not at its front)."""
    args = parse_args(["--out", "x", "--preset", "small", "--bookers", "3000"])
    n = sizes(args)
    for admission in ("arrival", "booking_order", "lottery"):
        buyers, pollers, bots = choose_bookers(admission, 3000, n, random.Random(5), "seed-y")
        assert len(bots) == n.bot_accounts == 200
        assert len(set(bots)) == len(bots)
        assert not set(bots) & (set(buyers) | set(pollers))
        assert all(0 <= b < 3000 for b in bots)


def test_a_guessed_code_must_be_refused() -> None:
    def judged(status: int, body: dict[str, object]) -> str | None:
        return checks.judge_guess(status, orjson.dumps(body)).problem

    assert judged(409, {"error": "fcode_invalid", "message": "no"}) is None
    assert judged(429, {"error": "fcode_throttled", "message": "wait"}) is None
    assert judged(429, {"error": "rate_limited", "message": "wait"}) is None
    assert judged(201, {"order": {"order_id": "x"}}) == "201 for a guessed F-code"
    assert judged(500, {"error": "internal_error", "message": "x"}) is not None
    assert judged(409, {"error": "limit_reached", "message": "x"}) is not None


def test_payment_answers_are_judged_by_their_bodies() -> None:
    def judged(status: int, body: dict[str, object], order_id: str = "s.o1") -> str | None:
        return checks.judge_pay(status, orjson.dumps(body), order_id=order_id).problem

    def payment(outcome: str, reason: str | None, order_id: str = "s.o1") -> dict[str, object]:
        return {"payment": {"order_id": order_id, "outcome": outcome, "reason": reason}}

    assert judged(200, payment("paid", None)) is None
    assert judged(200, payment("refund_required", "reservation_expired")) is None
    assert judged(200, payment("refund_required", "amount_mismatch")) is not None
    assert judged(200, payment("refund_required", "already_paid")) is not None
    assert judged(200, payment("paid", None, order_id="s.other")) == "200 without the payment"
    assert judged(200, {"order": {"order_id": "s.o1", "status": "paid"}}) is not None
    assert judged(401, {"error": "invalid_signature", "message": "x"}) is not None
    assert checks.judge_pay(200, orjson.dumps(payment("paid", None)), order_id="s.o1").answer == (
        "200 paid"
    )


def _arrival(order: str, sequence: int, at: float, event_id: str | None = None) -> Arrival:
    return Arrival(event_id or f"evt_{order}_{sequence}", order, "s", sequence, "order.x", at)


# two orders: "a" with three events, "b" with two
EXPECTED = ExpectedEvents(
    versions={"a": 3, "b": 2},
    ids={(o, n): f"evt_{o}_{n}" for o, last in (("a", 3), ("b", 2)) for n in range(1, last + 1)},
    written_at={(o, n): 100.0 + n for o, last in (("a", 3), ("b", 2)) for n in range(1, last + 1)},
    last_written_at=103.0,
)


def _judged(*arrivals: Arrival, ordered: bool = True) -> tuple[bool, str]:
    check = check_events("s", arrivals, EXPECTED, ordered=ordered).check()
    return check.ok, check.detail


def test_the_events_verdict_holds_for_every_event_in_order_repeats_included() -> None:
    arrivals = [_arrival("a", 1, 101.5), _arrival("b", 1, 101.6), _arrival("a", 2, 102.5),
                _arrival("a", 2, 102.6), _arrival("b", 2, 102.7), _arrival("a", 3, 103.5),
                Arrival("evt_other", "z", "another-sale", 1, "order.reserved", 103.6)]  # fmt: skip
    findings = check_events("s", arrivals, EXPECTED)
    assert findings.check().ok, findings.check().detail
    assert (findings.arrived, findings.expected, findings.repeats) == (5, 5, 1)
    assert findings.deliveries == 6  # another sale's event is not this sale's
    assert findings.last_arrived_at == 103.5
    assert findings.gap_s == pytest.approx(0.5)
    # the last arrival of the events written by then
    assert findings.delivered_by(EXPECTED, 101.0) == 101.6
    assert findings.delivered_by(EXPECTED, 102.0) == 102.7
    assert check_events("s", arrivals[:3], EXPECTED).delivered_by(EXPECTED, 102.0) is None


def test_the_events_verdict_fails_for_a_missing_event() -> None:
    ok, detail = _judged(_arrival("a", 1, 1), _arrival("a", 2, 2), _arrival("b", 1, 3),
                         _arrival("b", 2, 4))  # fmt: skip
    assert not ok
    assert "1 missing, e.g. a#3" in detail
    # pulled events are not held to the relay's order, but never to fewer events
    ok, detail = _judged(_arrival("a", 1, 1), _arrival("a", 3, 2), _arrival("b", 1, 3),
                         _arrival("b", 2, 4), ordered=False)  # fmt: skip
    assert not ok
    assert "1 missing, e.g. a#2" in detail


def test_the_events_verdict_fails_for_an_event_out_of_order() -> None:
    in_order = [_arrival("a", 1, 1), _arrival("a", 2, 2), _arrival("a", 3, 3),
                _arrival("b", 1, 4), _arrival("b", 2, 5)]  # fmt: skip
    swapped = [in_order[0], in_order[2], in_order[1], *in_order[3:]]
    ok, detail = _judged(*swapped)
    assert not ok
    assert "out of order, e.g. a#3" in detail
    assert _judged(*swapped, ordered=False)[0]  # pulled: the order is not the relay's promise
    assert _judged(*in_order)[0]


def test_the_events_verdict_fails_for_a_repeat_under_another_id_or_an_unknown_event() -> None:
    base = [_arrival("a", 1, 1), _arrival("a", 2, 2), _arrival("a", 3, 3),
            _arrival("b", 1, 4), _arrival("b", 2, 5)]  # fmt: skip
    ok, detail = _judged(*base, _arrival("b", 2, 6, event_id="evt_else"))
    assert not ok
    assert "with two ids, e.g. b#2" in detail
    ok, detail = _judged(*base, _arrival("b", 3, 6))
    assert not ok
    assert "unexpected, e.g. b#3" in detail
    ok, detail = _judged(_arrival("a", 1, 1, event_id="evt_wrong"), *base[1:])
    assert not ok
    assert "with two ids, e.g. a#1" in detail
    not_recorded = ExpectedEvents(versions={"a": 1}, ids={}, written_at={})
    check = check_events("s", [_arrival("a", 1, 1)], not_recorded).check()
    assert not check.ok
    assert "not in the outbox, e.g. a#1" in check.detail


def test_the_units_verdict_fails_above_the_stock() -> None:
    assert units_check(10, [3, 10, 7]).ok
    assert not units_check(10, [3, 11, 7]).ok
    assert not units_check(10, []).ok  # nothing sampled: nothing shown


def test_repeated_payments_are_judged_against_the_first_answer() -> None:
    first = {"payment": {"order_id": "s.o1", "outcome": "paid", "reason": None, "late": False}}
    again = Send("pay_1", "msg_1", 100, "USD", Expect.SAME)

    def judged(body: dict[str, object]) -> str | None:
        return checks.judge_pay(200, orjson.dumps(body), order_id="s.o1", send=again,
                                previous=first["payment"]).problem  # fmt: skip

    assert judged(first) is None
    refund = {"order_id": "s.o1", "outcome": "refund_required", "reason": "already_paid"}
    assert judged({"payment": refund}) == "the same payment answered differently the second time"
    wrong = Send("pay_1", "msg_1", 101, "USD", Expect.AMOUNT_MISMATCH)
    answer = orjson.dumps({"payment": {**refund, "reason": "amount_mismatch"}})
    assert checks.judge_pay(200, answer, order_id="s.o1", send=wrong).problem is None
    assert checks.judge_pay(200, orjson.dumps(first), order_id="s.o1", send=wrong).problem == (
        "a wrong amount decided paid None"
    )
