"""The launch-day rehearsal (scripts/launch-rehearsal, loadtest/): a small launch end to end,
and the pieces whose mistakes would quietly skew it."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import orjson
import pytest

from flashsale.booking.lottery import Draw
from flashsale.settings import Settings
from loadtest import checks
from loadtest.rehearsal.identities import lottery_booking_no
from tests.helpers import flashsale_env

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REQUIRED = b'{"error": "booking_required", "message": "book first"}'


@pytest.mark.timeout(240)
def test_small_rehearsal_sells_out_and_the_verdict_holds(
    settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "rehearsal"
    # the suite runs from the installed venv already (CI runs ./scripts/install first)
    done = subprocess.run(
        [str(REPO / "scripts" / "launch-rehearsal"), "--no-install", "--preset", "small",
         "--out", str(out)],
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
    assert bots["refused_by_answer"].get("429 rate_limited", 0) > 0
    assert buy.get("bot: 201", 0) + bots["refused"] <= bots["requests"]
    assert report["postgres"]["pg_caught_up_after_sellout_s"] is not None
    assert (out / "chart.png").read_bytes()[:8] == PNG_SIGNATURE
    assert "verdict: all invariants hold" in done.stdout
    # the rehearsal ran in this test's stores: its orders are in the test's database
    assert report["settings"]["key_prefix"] == settings.key_prefix
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
