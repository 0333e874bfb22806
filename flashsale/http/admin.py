"""Operator endpoints: create a sale, pause, resume, close, and watch its numbers."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import replace

from aiohttp import web

from flashsale import errors
from flashsale.booking import lottery
from flashsale.engine.engine import now_ms
from flashsale.http import sale_options
from flashsale.http.responses import json_response
from flashsale.http.sale_warnings import sale_warnings
from flashsale.http.services import SERVICES, Services
from flashsale.http.validation import (
    boolean,
    integer,
    number,
    path_sale_id,
    read_json_object,
    reject_unknown,
    text,
    timestamp_ms,
)
from flashsale.ids import SALE_ID_RE, new_sale_id
from flashsale.models import (
    DEFAULT_CURRENCY,
    DEFAULT_RATE_PER_ADDRESS,
    DEFAULT_RATE_PER_USER,
    Admission,
    BookingPolicy,
    RateLimit,
    SaleDefinition,
    SaleState,
    SaleView,
    iso,
)
from flashsale.store import bookings as booking_store
from flashsale.store import dead_letters
from flashsale.store import orders as order_store
from flashsale.store import sales as sale_store

log = logging.getLogger(__name__)

_BOOKING_FIELDS = frozenset({
    "booking_opens_at", "booking_closes_at", "booking_required", "booking_capacity", "admission",
    "admission_ratio", "admission_window_s", "lottery_seed",
})  # fmt: skip
_QUEUE_FIELDS = frozenset({"admission_ratio", "admission_window_s"})

_RATE_FIELDS = frozenset({
    "rate_per_user", "burst_per_user", "rate_per_address", "burst_per_address",
})  # fmt: skip

_SALE_FIELDS = frozenset({
    "sale_id", "sku", "name", "price_cents", "stock", "per_user_limit", "starts_at", "ends_at",
    "reservation_ttl_s", "fcode_stock", "fcode_opens_at", "currency", *_BOOKING_FIELDS,
    *_RATE_FIELDS, *sale_options.OPTION_FIELDS,
})  # fmt: skip
_CURRENCY = re.compile(r"\A[A-Z]{3}\Z")


def admin_services(request: web.Request) -> Services:
    """The services, for an operator: anyone else is refused with 401."""
    services = request.app[SERVICES]
    services.admin.check(request.headers.get("Authorization"))
    return services


def parse_sale(
    body: dict[str, object], *, default_currency: str = DEFAULT_CURRENCY
) -> SaleDefinition:
    reject_unknown(body, _SALE_FIELDS)
    raw_id = body.get("sale_id")
    if raw_id is None:
        sale_id = new_sale_id()
    elif isinstance(raw_id, str) and SALE_ID_RE.match(raw_id):
        sale_id = raw_id
    else:
        raise errors.InvalidRequest(
            "'sale_id' must be 1 to 64 lower-case letters, digits and hyphens, "
            "not starting or ending with a hyphen"
        )
    starts_ms, ends_ms = timestamp_ms(body, "starts_at"), timestamp_ms(body, "ends_at")
    if ends_ms <= starts_ms:
        raise errors.InvalidRequest("'ends_at' must be after 'starts_at'")
    stock = integer(body, "stock", minimum=1, maximum=100_000_000)
    fcode_stock = integer(body, "fcode_stock", default=0, minimum=0, maximum=stock)
    fcode_opens_ms = (
        None if body.get("fcode_opens_at") is None else timestamp_ms(body, "fcode_opens_at")
    )
    if fcode_opens_ms is not None and fcode_opens_ms >= ends_ms:
        raise errors.InvalidRequest("'fcode_opens_at' must be before 'ends_at'")
    booking = _parse_booking(body, starts_ms, ends_ms)
    return SaleDefinition(
        sale_id=sale_id,
        sku=text(body, "sku", max_len=64),
        name=text(body, "name", max_len=200),
        price_cents=integer(body, "price_cents", minimum=0, maximum=10**12),
        stock=stock,
        per_user_limit=integer(body, "per_user_limit", default=1, minimum=1, maximum=1000),
        starts_ms=starts_ms,
        ends_ms=ends_ms,
        reservation_ttl_s=integer(
            body, "reservation_ttl_s", default=900, minimum=1, maximum=86_400
        ),
        fcode_stock=fcode_stock,
        fcode_opens_ms=fcode_opens_ms,
        booking=booking,
        rate_per_user=_parse_rate(body, "user", DEFAULT_RATE_PER_USER),
        rate_per_address=_parse_rate(body, "address", DEFAULT_RATE_PER_ADDRESS),
        currency=_parse_currency(body, default_currency),
        opening=sale_options.parse_opening(body, starts_ms, ends_ms, booking),
        fcode_release_ms=sale_options.parse_fcode_release(
            body, fcode_stock, starts_ms if fcode_opens_ms is None else fcode_opens_ms, ends_ms
        ),
    )


def _parse_currency(body: dict[str, object], default: str) -> str:
    value = body.get("currency", default)
    if not isinstance(value, str) or not _CURRENCY.match(value):
        raise errors.InvalidRequest(
            "'currency' must be an ISO 4217 code: three upper-case letters, e.g. USD"
        )
    return value


# The GCRA of buy.lua and book.lua lets one request through every 1e6 / rate µs and up to
# ``burst`` of them ahead of time, so a limiter's stored arrival time runs up to
# burst x 1e6 / rate µs past now, and its key expires that long after. These bounds keep that
# at most 10^14 µs (about 3 years): far below 2^53, where Lua's doubles stop counting
# microseconds exactly (now is about 1.8 x 10^15 µs), and a valid PX. A rate near 0 made it
# 10^21 µs, which Redis refuses as an expiry: every buy and booking of the sale failed.
RATE_MIN, RATE_MAX = 0.01, 1_000_000  # one request every 100 s .. one every µs
BURST_MAX = 1_000_000


def _parse_rate(body: dict[str, object], who: str, default: RateLimit) -> RateLimit:
    """``rate_per_<who>`` requests a second (0: no limit) and ``burst_per_<who>`` at once."""
    rate_name, burst_name = f"rate_per_{who}", f"burst_per_{who}"
    rate = number(body, rate_name, default=default.rate, minimum=-math.inf, maximum=math.inf)
    if rate != 0 and not RATE_MIN <= rate <= RATE_MAX:
        raise errors.InvalidRequest(
            f"'{rate_name}' must be 0 (no limit) or from {RATE_MIN:g} to {RATE_MAX} "
            "requests a second"
        )
    if rate == 0:
        burst = body.get(burst_name, 0)
        if not isinstance(burst, int) or isinstance(burst, bool) or burst != 0:
            raise errors.InvalidRequest(f"'{burst_name}' needs a '{rate_name}' above 0")
        return RateLimit(0.0, 0)
    burst = integer(body, burst_name, default=max(1, default.burst), minimum=1,
                    maximum=BURST_MAX)  # fmt: skip
    return RateLimit(rate, burst)


def _parse_booking(body: dict[str, object], starts_ms: int, ends_ms: int) -> BookingPolicy | None:
    given = _BOOKING_FIELDS & body.keys()
    if sale_options.opening_requested(body):  # the window's queue takes the queue fields
        given -= _QUEUE_FIELDS
    if not given:
        return None
    opens_ms = timestamp_ms(body, "booking_opens_at")
    closes_ms = timestamp_ms(body, "booking_closes_at")
    if closes_ms <= opens_ms:
        raise errors.InvalidRequest("'booking_closes_at' must be after 'booking_opens_at'")
    if closes_ms > ends_ms:
        raise errors.InvalidRequest("'booking_closes_at' may not be after 'ends_at'")
    raw_admission = body.get("admission", Admission.ARRIVAL.value)
    try:
        admission = Admission(str(raw_admission)) if isinstance(raw_admission, str) else None
    except ValueError:
        admission = None
    if admission is None:
        choices = ", ".join(a.value for a in Admission)
        raise errors.InvalidRequest(f"'admission' must be one of: {choices}")
    if admission.queued and closes_ms > starts_ms:
        raise errors.InvalidRequest(
            f"with admission '{admission.value}' the queue is fixed when the sale opens: "
            "'booking_closes_at' may not be after 'starts_at'"
        )
    if not admission.queued and given & _QUEUE_FIELDS:
        raise errors.InvalidRequest(
            "'admission_ratio' and 'admission_window_s' apply only to admission "
            "'booking_order' or 'lottery', or to a sale with an 'opening_window_ms'"
        )
    if admission is not Admission.LOTTERY and "lottery_seed" in given:
        raise errors.InvalidRequest("'lottery_seed' applies only to admission 'lottery'")
    capacity = body.get("booking_capacity")
    return BookingPolicy(
        opens_ms=opens_ms,
        closes_ms=closes_ms,
        admission=admission,
        required=boolean(body, "booking_required", default=False),
        capacity=None
        if capacity is None
        else integer(body, "booking_capacity", minimum=1, maximum=1_000_000_000),
        admission_ratio=number(body, "admission_ratio", default=1.0, minimum=0.01, maximum=1000.0)
        if admission.queued
        else 1.0,
        admission_window_s=integer(
            body, "admission_window_s", default=120, minimum=1, maximum=86_400
        )
        if admission.queued
        else 120,
        lottery_seed=(text(body, "lottery_seed", max_len=128) if "lottery_seed" in body else None),
    )


def with_lottery_seed(sale: SaleDefinition, stored: SaleDefinition | None) -> SaleDefinition:
    """A lottery sale created without a seed gets a fresh random one, or, when the create is
    being repeated, the one it got the first time. So does an opening window's seed."""
    sale = sale_options.with_opening_seed(sale, stored)
    policy = sale.booking
    if policy is None or policy.admission is not Admission.LOTTERY or policy.lottery_seed:
        return sale
    stored_seed = stored.booking.lottery_seed if stored is not None and stored.booking else None
    return replace(sale, booking=replace(policy, lottery_seed=stored_seed or lottery.new_seed()))


async def create_sale(request: web.Request) -> web.Response:
    services = admin_services(request)
    body = await read_json_object(
        request, services.settings.admin_max_body_bytes, services.settings.body_timeout_s
    )
    requested = parse_sale(body, default_currency=services.settings.default_currency)
    now = now_ms()
    if requested.ends_ms <= now:
        raise errors.InvalidRequest(
            f"'ends_at' {iso(requested.ends_ms)} is in the past: the sale would be over before "
            "it began"
        )
    sale = with_lottery_seed(requested, None)
    # PostgreSQL holds the definition; Redis is armed from it. A create interrupted between the
    # two is completed by repeating it: same definition, not yet armed -> armed now.
    if not await sale_store.insert_sale(services.pool, sale):
        stored = await sale_store.fetch_sale(services.pool, sale.sale_id)
        if stored is None:
            raise errors.SaleExists()
        sale = with_lottery_seed(requested, stored[0])
        if stored[0] != sale:
            raise errors.SaleExists()
    if not await services.engine.arm_sale(sale):
        raise errors.SaleExists()
    view = await services.engine.get_sale(sale.sale_id)
    log.info("sale %s created: %d units of %s", sale.sale_id, sale.stock, sale.sku)
    return json_response(
        {"sale": view.admin_json(now_ms()), "warnings": sale_warnings(sale, now)}, status=201
    )


async def _set_state(request: web.Request, state: SaleState) -> web.Response:
    services = admin_services(request)
    sale_id = path_sale_id(request)
    await services.engine.set_state(sale_id, state)
    await sale_store.update_state(services.pool, sale_id, state)
    view = await services.engine.get_sale(sale_id)
    log.info("sale %s: %s", sale_id, _STATE_LOG[state])
    answer: dict[str, object] = {"sale": view.admin_json(now_ms())}
    if state is not SaleState.ACTIVE:
        answer["note"] = _unpaid_note(state, view, await services.engine.last_deadline_ms(sale_id))
    return json_response(answer)


_STATE_LOG = {SaleState.ACTIVE: "resumed", SaleState.PAUSED: "paused", SaleState.CLOSED: "closed"}


def _unpaid_note(state: SaleState, view: SaleView, last_deadline_ms: int | None) -> str:
    """What a pause or a close does to the reservations not yet paid."""
    if state is SaleState.PAUSED:
        head = ("Paused: shoppers are refused with 409 sale_paused until it is resumed; "
                "nothing is reserved meanwhile.")  # fmt: skip
    else:
        head = ("Closed for good: nothing more is sold, and units that come back are not sold "
                "again.")  # fmt: skip
    reserved = view.counters.reserved
    if not reserved or last_deadline_ms is None:
        return f"{head} No reservation is waiting for payment."
    return (
        f"{head} {reserved} unit(s) reserved and unpaid can still be paid or cancelled until "
        f"their reservations expire (the last at {iso(last_deadline_ms)})."
    )


async def pause_sale(request: web.Request) -> web.Response:
    return await _set_state(request, SaleState.PAUSED)


async def resume_sale(request: web.Request) -> web.Response:
    return await _set_state(request, SaleState.ACTIVE)


async def close_sale(request: web.Request) -> web.Response:
    return await _set_state(request, SaleState.CLOSED)


async def sale_stats(request: web.Request) -> web.Response:
    services = admin_services(request)
    sale_id = path_sale_id(request)
    view = await services.engine.get_sale(sale_id)
    in_postgres = await order_store.count_by_status(services.pool, sale_id)
    refused = await dead_letters.count(services.engine.redis, services.engine.keys.sale(sale_id))
    c, d = view.counters, view.definition
    last_deadline = await services.engine.last_deadline_ms(sale_id)
    queue = {}
    if view.definition.booking is not None:
        queue = {
            "bookings": c.bookings,
            "bookings_in_postgres": await booking_store.count_bookings(services.pool, sale_id),
        }
        if view.definition.booking.admission.queued:
            admitted = c.admitted if now_ms() >= view.definition.starts_ms else 0
            queue |= {"admitted": admitted, "waiting": c.bookings - admitted}
    if d.opening is not None:  # an opening window's queue: its tickets
        admitted = c.admitted if now_ms() >= d.draw_ms else 0
        queue |= {"tickets": c.tickets, "admitted": admitted, "waiting": c.tickets - admitted}
    return json_response({
        "stats": {
            "sale_id": sale_id,
            "name": d.name,
            "status": view.status(now_ms()).value,
            "control": view.state.value,
            "starts_at": iso(d.starts_ms),
            "ends_at": iso(d.ends_ms),
            # units: available + fcode_available + reserved + paid == stock, always
            "stock": d.stock,
            "available": c.available,
            "fcode_stock": d.fcode_stock,
            "fcode_available": c.fcode_available,
            # F-code units passed to the public lane (in "available") by the lane's release
            "fcode_released": c.fcode_released,
            "reserved": c.reserved,
            "paid": c.paid,
            "units_add_up": c.available + c.fcode_available + c.reserved + c.paid == d.stock,
            # units that came back (they may have sold again), and of the paid, those bought
            # by a payment after their reservation expired (counted in expired too)
            "expired": c.expired,
            "cancelled": c.cancelled,
            "paid_late": c.paid_late,
            # units taken from the stock so far, by reservations and late payments: a unit
            # that came back and sold again counts again (its rate is the sale's pace)
            "sold_total": c.reserved + c.paid + c.expired + c.cancelled,
            "last_reservation_expires_at": None if last_deadline is None else iso(last_deadline),
            "fcode_failures": c.fcode_failures,
            "orders_in_postgres": in_postgres,
            # events PostgreSQL refused for good: `flashsale deadletters` shows them
            "dead_letters": refused,
            **queue,
        }
    })  # fmt: skip
