"""Properties over generated input (Hypothesis), against the real service.

(a) Sale options: a create either answers a clean 4xx ``{error, message}`` and leaves nothing
    behind, or makes a sale on which a buy answers 201 (its order reaches PostgreSQL) or a clean
    4xx that changes nothing; options drawn from the documented bounds always make a sale.
(b) Token claims: a buy either answers 201 and its order reaches PostgreSQL under the token's
    ``sub``, or a clean 4xx that changes nothing. A ``sub`` that is not 1 to 128 printable
    characters, or times that are not numbers, never get past 401.

Examples are derandomized (the same ones every run) and few, so the file stays quick; one
service serves every example of a test, each example on a fresh sale.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from tests.booking_helpers import book
from tests.helpers import Reply, Service

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # explaining costs a minute
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ABSENT = object()  # a field left out of the request
EARLIEST = "2000-01-01T00:00:00+00:00"
LATEST = "9999-01-01T00:00:00+00:00"
BEFORE_EARLIEST = "1999-12-31T23:59:59.999+00:00"
AFTER_LATEST = "9999-01-01T00:00:00.001+00:00"
MAX_TOKEN_CHARS = 4096  # longer bearer tokens are refused whatever they hold
PG_WAIT_S = 5.0


def assert_clean_error(reply: Reply, what: str) -> None:
    assert 400 <= reply.status < 500, f"{what}: {reply.status} {reply.body}"
    assert set(reply.body) == {"error", "message"}, f"{what}: {reply.body}"
    assert isinstance(reply.body["error"], str), f"{what}: {reply.body}"
    assert isinstance(reply.body["message"], str), f"{what}: {reply.body}"
    assert reply.body["message"], f"{what}: {reply.body}"


async def order_row(service: Service, sale_id: str, order_id: str) -> Any:
    await service.wait_for_postgres(sale_id, timeout_s=PG_WAIT_S)
    return await service.services.pool.fetchrow(
        "SELECT user_id, quantity, status FROM orders WHERE order_id = $1", order_id
    )


async def assert_in_postgres(service: Service, order: dict[str, Any], what: str) -> None:
    """An order answered 201 reaches PostgreSQL, under the user id it was answered with."""
    row = await order_row(service, order["sale_id"], order["order_id"])
    assert row is not None, f"{what}: an order answered 201 is not in PostgreSQL"
    assert (row["user_id"], row["quantity"]) == (order["user_id"], order["quantity"]), what


async def buy_and_check(service: Service, sale_id: str, headers: dict[str, str],
                        what: str) -> Reply:  # fmt: skip
    """Buy one unit: any answer but a 201 or 202 is a clean 4xx that changes nothing in the
    sale's numbers. (The caller checks that a 201's order reaches PostgreSQL.)"""
    before = await service.stats(sale_id)
    reply = await service.call("POST", f"/v1/sales/{sale_id}/buy", json={}, headers=headers)
    assert reply.status < 500, f"{what}: {reply.status} {reply.body}"
    if reply.status == 201:
        assert reply.body["order"]["quantity"] == 1, f"{what}: {reply.body}"
    elif reply.status == 202:  # queued: nothing reserved
        assert await service.stats(sale_id) == before, what
    else:
        assert_clean_error(reply, what)
        assert await service.stats(sale_id) == before, f"{what}: a refused buy changed the sale"
    return reply


# -- (a) sale options -----------------------------------------------------------------------


@dataclass(frozen=True)
class In:
    """A time ``seconds`` from the moment the example runs (strategies are drawn ahead)."""

    seconds: float


def resolve_times(spec: dict[str, Any]) -> dict[str, Any]:
    now = datetime.now(UTC)  # one clock for all: In(-5) and In(-5) are the same time
    return {
        k: (now + timedelta(seconds=v.seconds)).isoformat() if isinstance(v, In) else v
        for k, v in spec.items()
    }


PRINTABLE = st.characters(codec="utf-8", categories=["L", "M", "N", "P", "S"]) | st.just(" ")


def valid_text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(PRINTABLE, min_size=1, max_size=max_size).filter(lambda s: bool(s.strip()))


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.just(ABSENT) | strategy


QUEUED = ("booking_order", "lottery")
BOOKING_FIELDS = {"booking_opens_at", "booking_closes_at", "booking_capacity", "admission_ratio",
                  "admission_window_s"}  # fmt: skip


@st.composite
def valid_options(draw: st.DrawFn) -> dict[str, Any]:
    """Options inside every documented bound, for a sale open since a moment (or since 2000)."""
    stock = draw(st.integers(1, 10**8))
    spec: dict[str, Any] = {
        "sku": draw(valid_text(64)),
        "name": draw(valid_text(200)),
        "price_cents": draw(st.integers(0, 10**12)),
        "stock": stock,
        "fcode_stock": draw(maybe(st.integers(0, stock - 1))),
        "per_user_limit": draw(maybe(st.integers(1, 1000))),
        "reservation_ttl_s": draw(maybe(st.integers(1, 86_400))),
        "ends_at": draw(st.sampled_from([In(7200), LATEST])),
        "fcode_opens_at": draw(maybe(st.sampled_from([EARLIEST, In(-5)]))),
    }
    admission = draw(st.sampled_from([None, "arrival", *QUEUED]))
    if admission in QUEUED:
        # the queue is fixed when the sale opens: booking closes at the latest then
        spec |= {"starts_at": In(-5), "booking_closes_at": In(-5)}
        spec["admission_ratio"] = draw(maybe(st.floats(0.01, 1000.0)))
        spec["admission_window_s"] = draw(maybe(st.integers(1, 86_400)))
        if admission == "lottery":
            spec["lottery_seed"] = draw(maybe(valid_text(128)))
    else:
        spec["starts_at"] = draw(st.sampled_from([In(-5), EARLIEST]))
    if admission is not None:
        spec["admission"] = admission
        spec["booking_opens_at"] = draw(st.sampled_from([EARLIEST, In(-60)]))
        spec.setdefault("booking_closes_at", draw(st.sampled_from([In(1800), spec["ends_at"]])))
        spec["booking_capacity"] = draw(maybe(st.integers(1, 10**9)))
        spec["booking_required"] = draw(maybe(st.just(False)))
    for who in ("user", "address"):
        rate = draw(maybe(st.just(0) | st.floats(0.01, 1e6) | st.integers(1, 10**6)))
        spec[f"rate_per_{who}"] = rate
        if rate != 0 and (rate is not ABSENT or who == "user"):  # per address: off by default
            spec[f"burst_per_{who}"] = draw(maybe(st.integers(1, 10**6)))
    return {k: v for k, v in spec.items() if v is not ABSENT}


def int_edges(lo: int, hi: int) -> st.SearchStrategy[Any]:
    return st.sampled_from([lo - 1, lo, hi, hi + 1]) | st.integers(lo - 1, hi + 1)


RATE_EDGES = (
    # (the gap between off and the slowest rate first: it once made every buy fail)
    st.sampled_from([1e-15, 0.0099999, 5e-324, 1e-8, 0, -0.0, -1, 0.01, 1e6, 1_000_000.5])
    | st.floats(0, 0.02)
    | st.floats(0, 2e6)
)
RATE_FIELDS = ["rate_per_user", "rate_per_address", "burst_per_user", "burst_per_address"]
# values at and around each numeric option's bounds (the times' too)
EDGES: dict[str, st.SearchStrategy[Any]] = {
    "stock": int_edges(1, 10**8),
    "fcode_stock": st.integers(-1, 10**8 + 1),
    "price_cents": int_edges(0, 10**12),
    "per_user_limit": int_edges(1, 1000),
    "reservation_ttl_s": int_edges(1, 86_400),
    "booking_capacity": int_edges(1, 10**9),
    "admission_ratio": st.sampled_from([0.0099999, 0.01, 1000.0, 1000.0000001])
    | st.floats(0, 1001),
    "admission_window_s": int_edges(1, 86_400),
    "rate_per_user": RATE_EDGES,
    "rate_per_address": RATE_EDGES,
    "burst_per_user": int_edges(1, 10**6),
    "burst_per_address": int_edges(1, 10**6),
    "starts_at": st.sampled_from([BEFORE_EARLIEST, EARLIEST]),
    "ends_at": st.sampled_from([LATEST, AFTER_LATEST]),
    "fcode_opens_at": st.sampled_from([BEFORE_EARLIEST, EARLIEST]),
    "booking_opens_at": st.sampled_from([BEFORE_EARLIEST, EARLIEST]),
    "booking_closes_at": st.sampled_from([LATEST, AFTER_LATEST]),
}


def within_bounds(spec: dict[str, Any]) -> bool:
    """What the documented bounds say of options that are valid_options() with one of them
    moved to an edge (so every value has the right type)."""
    stock, admission = spec["stock"], spec.get("admission")
    booking, queued = admission is not None, admission in QUEUED
    times_ok = all(spec.get(f) not in (BEFORE_EARLIEST, AFTER_LATEST) for f in EDGES)
    ints_ok = (
        1 <= stock <= 10**8
        and 0 <= spec.get("fcode_stock", 0) <= stock
        and 0 <= spec["price_cents"] <= 10**12
        and 1 <= spec.get("per_user_limit", 1) <= 1000
        and 1 <= spec.get("reservation_ttl_s", 1) <= 86_400
        and 1 <= spec.get("booking_capacity", 1) <= 10**9
        and (queued or not {"admission_ratio", "admission_window_s"} & spec.keys())
        and 0.01 <= spec.get("admission_ratio", 1) <= 1000
        and 1 <= spec.get("admission_window_s", 1) <= 86_400
    )
    closes = spec.get("booking_closes_at")
    order_ok = (
        # booking fields make sense only together
        (booking or not BOOKING_FIELDS & spec.keys())
        # a queued sale's booking closes when it starts (a moment ago): 2000 is too early
        and not (queued and spec["starts_at"] == EARLIEST)
        # booking may not close after the end, nor (queued) after the start
        and not (closes == LATEST and (queued or spec["ends_at"] != LATEST))
    )
    rates_ok = True
    for who, default_rate in (("user", 10), ("address", 0)):
        rate = spec.get(f"rate_per_{who}", default_rate)
        burst = spec.get(f"burst_per_{who}")
        if rate == 0:
            rates_ok &= burst is None or burst == 0
        else:
            rates_ok &= 0.01 <= rate <= 1e6 and (burst is None or 1 <= burst <= 10**6)
    return times_ok and ints_ok and order_ok and rates_ok


# what JSON can hold that no option takes, and some that an option does
ODD_VALUES: list[Any] = [
    0, -1, 1e-15, 2**53, 2**63, 1e300, "", " ", "10", "\u0000", "2030-01-01T00:00:00", True,
    False, None, [], {},
]  # fmt: skip
WILD = (
    st.sampled_from(ODD_VALUES)
    | st.integers()
    | st.floats()
    | st.text(max_size=300)
    | st.booleans()
    | st.none()
)
SALE_FIELDS = [
    "sku", "name", "price_cents", "stock", "per_user_limit", "starts_at", "ends_at",
    "reservation_ttl_s", "fcode_stock", "fcode_opens_at", "booking_opens_at",
    "booking_closes_at", "booking_required", "booking_capacity", "admission", "admission_ratio",
    "admission_window_s", "lottery_seed", "rate_per_user", "burst_per_user", "rate_per_address",
    "burst_per_address", "currency",
]  # fmt: skip


@st.composite
def sale_cases(draw: st.DrawFn) -> tuple[dict[str, Any], bool | None]:
    """(options, whether the documented bounds allow them; None: not predicted). Options are
    inside every bound, or have one moved to an edge, or one set to anything JSON holds."""
    spec = draw(valid_options())
    # (Hypothesis favours the first of a list: the edges, and the rates among them)
    mode = draw(st.sampled_from(["edge", "inside", "wild"]))
    if mode == "inside":
        return spec, True
    if mode == "edge":
        # the rates first: a rate near 0 once made every buy of its sale fail
        field = draw(st.sampled_from([*RATE_FIELDS, *sorted(EDGES.keys() - set(RATE_FIELDS))]))
        spec[field] = draw(EDGES[field])
        return spec, within_bounds(spec)
    field = draw(st.sampled_from(SALE_FIELDS))
    value = draw(maybe(WILD))
    if value is ABSENT:
        spec.pop(field, None)
    else:
        spec[field] = value
    return spec, None


class Sold(list[tuple[dict[str, Any], str]]):
    """Orders answered 201, with the example that made each."""

    def __repr__(self) -> str:  # Hypothesis shows the arguments of a failing example
        return f"<{len(self)} orders>"


@pytest.fixture
async def sold(service: Service) -> AsyncIterator[Sold]:
    """Orders answered 201. A new sale's stream reaches the order writer within about a
    second; waiting that long in every example would make the test slow, so every order is
    checked once, at the end (and must have reached PostgreSQL)."""
    orders = Sold()
    yield orders
    for order, what in orders:
        await assert_in_postgres(service, order, what)


def _options(**fields: Any) -> dict[str, Any]:
    return {"sku": "k", "name": "n", "price_cents": 1, "stock": 5, "starts_at": In(-5),
            "ends_at": In(7200), **fields}  # fmt: skip


@SETTINGS
@given(case=sale_cases())
# the defect this test was written for: every buy of such a sale answered 500
@example(case=(_options(rate_per_user=1e-15), False))
@example(case=(_options(rate_per_address=5e-324, burst_per_address=1_000_000), False))
@example(case=(_options(rate_per_user=0.01, burst_per_user=1_000_000), True))
async def test_sale_options_make_a_sale_that_sells_or_a_clean_400(
    service: Service, sold: Sold, case: tuple[dict[str, Any], bool | None]
) -> None:
    options, allowed = case
    sale_id = f"prop-{uuid.uuid4().hex[:12]}"
    spec = resolve_times(options) | {"sale_id": sale_id}
    what = f"options {json.dumps(spec, default=str)} (allowed by the bounds: {allowed})"
    created = await service.call(
        "POST", "/v1/admin/sales", json=spec, headers=service.admin_headers
    )
    assert created.status < 500, f"{what}: {created.body}"
    if allowed is not None:
        assert (created.status == 201) == allowed, f"{what}: {created.status} {created.body}"
    if created.status != 201:
        assert_clean_error(created, what)
        assert created.status == 400, f"{what}: {created.body}"
        assert await service.services.pool.fetchval(
            "SELECT count(*) FROM sales WHERE sale_id = $1", sale_id
        ) == 0, what  # fmt: skip
        engine = service.services.engine
        assert not await engine.redis.exists(engine.keys.sale(sale_id).sale), what
        return
    sale = created.body["sale"]
    reply = await buy_and_check(service, sale_id, service.auth("shopper"), what)
    if reply.status == 201:
        assert reply.body["order"]["user_id"] == "shopper", what
        sold.append((reply.body["order"], what))
    elif allowed and not spec.get("booking_required") and sale["available"] > 0:
        # open since a moment or since 2000, public units left, the first request of its
        # shopper: nothing the options say may refuse it
        raise AssertionError(f"{what}: {reply.status} {reply.body}")
    if "admission" in sale:
        booked = await book(service, sale_id, "booker")
        assert booked.status < 500, f"{what}: {booked.body}"
        if booked.status >= 400:
            assert_clean_error(booked, what)


# -- (b) token claims -----------------------------------------------------------------------

# a sub the rule allows: 1 to 128 printable characters (spaces at either end: see expected())
GOOD_SUBS = (
    st.text(PRINTABLE, min_size=1, max_size=16)
    | st.text(PRINTABLE, min_size=120, max_size=128)
    | st.sampled_from(["u" * 128, "\u00fcn\u00efc\u00f6d\u00e9", "a|b:c{d}", "\U0001f600" * 40])
)
NO_SURROGATES = st.characters(exclude_categories=["Cs"])  # PyJWT's JSON cannot carry them
ANY_SUBS = (
    st.sampled_from(["a\u0000b", "\u0000", "tab\there", "line\nbreak", "\x7f", "\u200b",
                     "\u2028", " alice", "alice ", "", "u" * 129, "\U0001f600" * 129])
    | st.text(NO_SURROGATES, max_size=20)
    | st.text(NO_SURROGATES, min_size=120, max_size=140)
    | st.integers() | st.floats() | st.booleans() | st.none() | st.lists(st.text(), max_size=2)
)  # fmt: skip
# A time claim, symbolic so that it is resolved against the clock when the example runs:
# ("rel", seconds from now), ("abs", the value as it stands) or ("absent", None).
FUTURE = st.tuples(st.just("rel"), st.integers(60, 10**9) | st.floats(60, 1e9)) | st.tuples(
    st.just("abs"), st.integers(10**11, 10**30) | st.floats(1e11, 1e300)
)
PAST = st.tuples(st.just("rel"), st.integers(-(10**9), -60) | st.floats(-1e9, -60)) | st.tuples(
    st.just("abs"), st.integers(-(10**30), 10**9) | st.floats(-1e300, 1e9)
)
ABSENT_CLAIM_VALUE = ("absent", None)
ABSENT_CLAIM = st.just(ABSENT_CLAIM_VALUE)
ANY_TIME = (
    FUTURE
    | PAST
    | ABSENT_CLAIM
    | st.tuples(st.just("abs"), st.floats() | st.booleans() | st.text(max_size=12) | st.none())
)
MARGIN_S = 30  # a time this close to now may land either side by the time the token is read


@st.composite
def claim_cases(draw: st.DrawFn) -> dict[str, Any]:
    """Claims that should buy, or that break one rule (or anything at all)."""
    case = draw(st.sampled_from(["sub", "valid", "exp", "nbf", "iat", "anything"]))
    claims = {
        "sub": draw(ANY_SUBS if case in ("sub", "anything") else GOOD_SUBS),
        "exp": draw(ANY_TIME if case in ("exp", "anything") else FUTURE),
        "nbf": draw(ANY_TIME if case in ("nbf", "anything") else ABSENT_CLAIM | PAST),
        "iat": draw(ANY_TIME if case in ("iat", "anything") else ABSENT_CLAIM | PAST),
    }
    return claims


def resolve(claim: tuple[str, Any], now: float) -> Any:
    kind, value = claim
    if kind == "absent":
        return ABSENT
    return now + value if kind == "rel" else value


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def expected(claims: dict[str, Any], token: str, now: float) -> str:
    """What the service must answer: "ok" (201), "refused" (401), or "either" for a time too
    close to now to call, a number near a double's limit, or a ``sub`` with spaces at either
    end (which the rule may or may not allow)."""
    numbers = [v for v in claims.values() if is_number(v)]
    if len(token) > MAX_TOKEN_CHARS or any(isinstance(v, float) and not math.isfinite(v)
                                           for v in numbers):  # fmt: skip
        return "refused"  # too long, or not JSON (Infinity, NaN)
    sub, exp, nbf = claims.get("sub"), claims.get("exp"), claims.get("nbf")
    if not isinstance(sub, str) or not 1 <= len(sub) <= 128 or not sub.isprintable():
        return "refused"
    if not is_number(exp) or exp < now - MARGIN_S:
        return "refused"
    for name in ("nbf", "iat"):
        if name in claims and not is_number(claims[name]):
            return "refused"
    if nbf is not None and nbf > now + MARGIN_S:
        return "refused"
    if exp <= now + MARGIN_S or (nbf is not None and nbf >= now - MARGIN_S):
        return "either"
    if any(abs(v) > 1e300 for v in numbers if isinstance(v, float)):
        return "either"
    return "either" if sub != sub.strip() else "ok"


def _claims(sub: Any) -> dict[str, Any]:
    return {"sub": sub, "exp": ("rel", 3600), "nbf": ABSENT_CLAIM_VALUE, "iat": ("rel", -5)}


@pytest.fixture
async def claims_sale(service: Service) -> str:
    """One sale for every example: a sale new to the order writer takes it up to a second to
    find, which every example would otherwise wait for."""
    sale = await service.create_sale(stock=100_000, per_user_limit=1000, rate_per_user=0)
    sale_id: str = sale["sale_id"]
    return sale_id


@SETTINGS
@given(case=claim_cases())
# a NUL in a user id: PostgreSQL's text cannot hold it, so its order stopped the writer
@example(case=_claims(sub="a\u0000b"))
@example(case=_claims(sub="shopper"))
async def test_token_claims_buy_for_their_sub_or_get_a_clean_401(
    service: Service, claims_sale: str, case: dict[str, Any]
) -> None:
    now = time.time()
    claims = {"sub": case["sub"]} | {
        name: resolve(case[name], now) for name in ("exp", "nbf", "iat")
    }
    claims = {k: v for k, v in claims.items() if v is not ABSENT}
    token = jwt.encode(claims, service.settings.token_secret, algorithm="HS256")
    want = expected(claims, token, now)
    what = f"claims {claims!r} (expected: {want})"
    headers = {"Authorization": f"Bearer {token}"}
    reply = await buy_and_check(service, claims_sale, headers, what)
    if want == "ok":
        assert reply.status == 201, f"{what}: {reply.body}"
    if want == "refused":
        assert reply.status == 401, f"{what}: {reply.status} {reply.body}"
    if reply.status == 201:
        order = reply.body["order"]
        assert order["user_id"] == claims["sub"], what
        await assert_in_postgres(service, order, what)
    else:
        assert reply.status == 401, f"{what}: {reply.status} {reply.body}"
        assert reply.body["error"] == "unauthorized", f"{what}: {reply.body}"
