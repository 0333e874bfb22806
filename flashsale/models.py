"""Domain objects: a sale's definition and live view, and an order. Plain data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from flashsale.booking import lottery
from flashsale.opening import shuffle


class SaleState(StrEnum):
    """What an operator set (``control`` in admin answers). The status a shopper sees also
    depends on the clock and stock."""

    ACTIVE = "active"
    PAUSED = "paused"
    CLOSED = "closed"


class SaleStatus(StrEnum):
    SCHEDULED = "scheduled"
    OPEN = "open"
    PAUSED = "paused"
    SOLD_OUT = "sold_out"
    ENDED = "ended"


class Admission(StrEnum):
    """Who of the booked shoppers may buy, and when.

    ``arrival``: every booked shopper once the sale opens, first come first served.
    ``booking_order``: in booking-number order, a window each; units not bought pass on.
    ``lottery``: as ``booking_order``, in the order of a seeded draw made at the start.
    """

    ARRIVAL = "arrival"
    BOOKING_ORDER = "booking_order"
    LOTTERY = "lottery"

    @property
    def queued(self) -> bool:
        return self is not Admission.ARRIVAL


class BookingState(StrEnum):
    WAITING = "waiting"  # not yet admitted
    ADMITTED = "admitted"  # may buy now, until the window closes
    PURCHASED = "purchased"  # holds units bought through the queue
    PASSED = "passed"  # window closed (or units released) without a purchase; or the sale ended


class OrderStatus(StrEnum):
    RESERVED = "reserved"
    PAID = "paid"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


def ms_to_datetime(ms: int) -> datetime:
    # whole seconds and milliseconds apart: ms / 1000 as a float rounds far-off times wrongly
    return datetime.fromtimestamp(ms // 1000, tz=UTC).replace(microsecond=ms % 1000 * 1000)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def datetime_to_ms(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(milliseconds=1)


# Every order answer carries three times, and in a sale they fall in the same few seconds:
# the text of a second is made once and kept (a few per process, cleared when it fills up).
_SECOND_TEXTS: dict[int, str] = {}
_SECOND_TEXTS_MAX = 4096


def iso(ms: int) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. ``2026-11-22T10:00:00.000Z``."""
    second, milli = divmod(ms, 1000)
    text = _SECOND_TEXTS.get(second)
    if text is None:
        if len(_SECOND_TEXTS) >= _SECOND_TEXTS_MAX:
            _SECOND_TEXTS.clear()
        text = _SECOND_TEXTS[second] = datetime.fromtimestamp(second, tz=UTC).isoformat()[:19]
    return f"{text}.{milli:03d}Z"


@dataclass(frozen=True, slots=True)
class BookingPolicy:
    """Booking (pre-registration) for a sale, and how booked shoppers are admitted to buy."""

    opens_ms: int
    closes_ms: int
    admission: Admission = Admission.ARRIVAL
    required: bool = False  # only booked shoppers may buy; otherwise the unbooked come last
    capacity: int | None = None  # most bookings taken; None: no limit
    admission_ratio: float = 1.0  # shoppers admitted at the start per public unit
    admission_window_s: int = 120  # how long an admitted shopper may take to buy
    # lottery only: the draw's seed, revealed at the start (its SHA-256 is public before)
    lottery_seed: str | None = None


@dataclass(frozen=True, slots=True)
class OpeningPolicy:
    """An opening window (sales without a booking queue): the public buy requests that arrive
    from ``window_ms`` before the start until ``window_ms`` after it get a ticket and nothing is
    reserved; when the window closes the tickets are put in an order drawn from ``seed`` and
    admitted in that order, ``admission_ratio`` shoppers a public unit, ``admission_window_s``
    each to buy (see flashsale/opening)."""

    window_ms: int
    seed: str | None = None  # revealed when the window closes (its SHA-256 is public before)
    admission_ratio: float = 1.0
    admission_window_s: int = 120


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``rate`` requests a second on average, ``burst`` at once (GCRA); rate 0: off."""

    rate: float
    burst: int

    @property
    def interval_us(self) -> int:
        """Microseconds between two requests at the average rate; 0 when off."""
        return round(1_000_000 / self.rate) if self.rate > 0 else 0

    def to_json(self) -> dict[str, float | int]:
        return {"rate": self.rate, "burst": self.burst}


# ISO 4217 currency of a sale that names none (the default of FLASHSALE_DEFAULT_CURRENCY)
DEFAULT_CURRENCY = "USD"

# A person clicking buy, however eagerly, stays under this; a script hammering does not.
DEFAULT_RATE_PER_USER = RateLimit(rate=10.0, burst=20)
# Off unless a sale sets it: many shoppers can share one address (campus, carrier NAT).
DEFAULT_RATE_PER_ADDRESS = RateLimit(rate=0.0, burst=0)


@dataclass(frozen=True, slots=True)
class SaleDefinition:
    """What an operator creates. Times are epoch milliseconds."""

    sale_id: str
    sku: str
    name: str
    price_cents: int
    stock: int
    per_user_limit: int
    starts_ms: int
    ends_ms: int
    reservation_ttl_s: int
    # units of ``stock`` set aside for F-code holders, who may buy from ``fcode_opens_ms`` on
    fcode_stock: int = 0
    fcode_opens_ms: int | None = None  # None: with the public, at ``starts_ms``
    booking: BookingPolicy | None = None  # None: no booking, anyone may buy
    # buy and book requests allowed per shopper and per client address (429 beyond)
    rate_per_user: RateLimit = DEFAULT_RATE_PER_USER
    rate_per_address: RateLimit = DEFAULT_RATE_PER_ADDRESS
    currency: str = DEFAULT_CURRENCY  # ISO 4217, of price_cents and of payments
    opening: OpeningPolicy | None = None  # None: no opening window, first come first served
    # when the F-code units nobody redeemed pass to the public lane; None: never
    fcode_release_ms: int | None = None

    @property
    def public_stock(self) -> int:
        return self.stock - self.fcode_stock

    @property
    def queue_opens_ms(self) -> int:
        """When public buy requests are first answered: with an opening window, by a ticket
        from ``window_ms`` before the start."""
        return self.starts_ms - (self.opening.window_ms if self.opening else 0)

    @property
    def draw_ms(self) -> int:
        """When the opening window closes and its tickets are put in order (the start
        without a window)."""
        return self.starts_ms + (self.opening.window_ms if self.opening else 0)

    @property
    def fcode_opens_at_ms(self) -> int:
        return self.starts_ms if self.fcode_opens_ms is None else self.fcode_opens_ms


@dataclass(frozen=True, slots=True)
class SaleCounters:
    """Units by where they are. ``available + fcode_available + reserved + paid == stock``
    always holds; ``expired`` and ``cancelled`` count units that came back (and may have sold
    again). ``available`` is the public lane, ``fcode_available`` the F-code lane."""

    available: int
    reserved: int
    paid: int
    expired: int
    cancelled: int
    fcode_available: int = 0
    fcode_failures: int = 0
    paid_late: int = 0  # of ``paid``: units bought again by a payment after their expiry
    bookings: int = 0  # booking numbers given (the last one)
    admitted: int = 0  # queue ranks admitted so far (queued admissions and opening windows)
    # F-code units that passed to the public lane (``available``): unredeemed at the release,
    # and every F-code unit given back after it
    fcode_released: int = 0
    tickets: int = 0  # opening window: tickets given (the last ticket number)


@dataclass(frozen=True, slots=True)
class SaleView:
    definition: SaleDefinition
    state: SaleState
    counters: SaleCounters

    def status(self, now_ms: int) -> SaleStatus:
        d = self.definition
        if self.state is SaleState.CLOSED or now_ms >= d.ends_ms:
            return SaleStatus.ENDED
        if now_ms < d.starts_ms:
            return SaleStatus.SCHEDULED
        if self.state is SaleState.PAUSED:
            return SaleStatus.PAUSED
        if self.counters.available <= 0:
            return SaleStatus.SOLD_OUT
        return SaleStatus.OPEN

    def public_json(self, now_ms: int) -> dict[str, Any]:
        d = self.definition
        return {
            "sale_id": d.sale_id,
            "sku": d.sku,
            "name": d.name,
            "price_cents": d.price_cents,
            "currency": d.currency,
            "stock": d.stock,
            "available": self.counters.available,
            "per_user_limit": d.per_user_limit,
            "starts_at": iso(d.starts_ms),
            "ends_at": iso(d.ends_ms),
            "status": self.status(now_ms).value,
            "fcode_stock": d.fcode_stock,
            "fcode_available": self.counters.fcode_available,
            "fcode_opens_at": iso(d.fcode_opens_at_ms),
            **self._release_json(),
            **self._opening_json(now_ms),
            "rate_limits": {
                "per_user": d.rate_per_user.to_json(),
                "per_address": d.rate_per_address.to_json(),
            },
            **self._booking_json(now_ms),
        }

    def _release_json(self) -> dict[str, Any]:
        release_ms = self.definition.fcode_release_ms
        if release_ms is None:
            return {}
        return {"fcode_release_at": iso(release_ms), "fcode_released": self.counters.fcode_released}

    def _opening_json(self, now_ms: int) -> dict[str, Any]:
        d, opening = self.definition, self.definition.opening
        if opening is None:
            return {}
        drawn = now_ms >= d.draw_ms
        seed_sha256 = None if opening.seed is None else shuffle.commitment(opening.seed)
        return {
            "opening_window_ms": opening.window_ms,
            "queue_opens_at": iso(d.queue_opens_ms),  # tickets from then on
            "opening_draw_at": iso(d.draw_ms),  # the window's tickets put in order then
            "opening_method": shuffle.METHOD,
            "opening_seed_sha256": seed_sha256,
            # secret until the draw, so that nobody can work out the order in advance
            "opening_seed": opening.seed if drawn else None,
            "tickets": self.counters.tickets,
            "admission_ratio": opening.admission_ratio,
            "admission_window_s": opening.admission_window_s,
            "admitted": self.counters.admitted if drawn else 0,
        }

    def _booking_json(self, now_ms: int) -> dict[str, Any]:
        policy = self.definition.booking
        if policy is None:
            return {}
        fields: dict[str, Any] = {
            "booking_opens_at": iso(policy.opens_ms),
            "booking_closes_at": iso(policy.closes_ms),
            "booking_required": policy.required,
            "booking_capacity": policy.capacity,
            "bookings": self.counters.bookings,
            "admission": policy.admission.value,
        }
        if policy.admission.queued:
            fields |= {
                "admission_ratio": policy.admission_ratio,
                "admission_window_s": policy.admission_window_s,
                "admitted": self.counters.admitted if now_ms >= self.definition.starts_ms else 0,
            }
        if policy.admission is Admission.LOTTERY and policy.lottery_seed is not None:
            drawn = now_ms >= self.definition.starts_ms
            fields |= {
                "lottery_method": lottery.METHOD,
                "lottery_seed_sha256": lottery.commitment(policy.lottery_seed),
                # secret until the draw, so that nobody can work out the order in advance
                "lottery_seed": policy.lottery_seed if drawn else None,
            }
        return fields

    def admin_json(self, now_ms: int) -> dict[str, Any]:
        # "status" is the one word for where a sale stands; "control" is only what the operator
        # set (pause, resume, close), which "status" already takes into account
        return {
            **self.public_json(now_ms),
            "reservation_ttl_s": self.definition.reservation_ttl_s,
            "control": self.state.value,
        }


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    sale_id: str
    user_id: str
    quantity: int
    status: OrderStatus
    created_ms: int
    expires_ms: int
    updated_ms: int
    campaign: str = ""  # the F-code campaign the order was bought with, "" for a public buy
    # what the order costs (the sale's price x quantity) and in which currency: what the
    # payment service is to charge
    amount_cents: int = 0
    currency: str = DEFAULT_CURRENCY

    def to_json(self) -> dict[str, Any]:
        fcode = {"campaign": self.campaign} if self.campaign else {}
        return {
            "order_id": self.order_id,
            "sale_id": self.sale_id,
            "user_id": self.user_id,
            "quantity": self.quantity,
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "status": self.status.value,
            "created_at": iso(self.created_ms),
            "expires_at": iso(self.expires_ms),
            "updated_at": iso(self.updated_ms),
            **fcode,
        }
