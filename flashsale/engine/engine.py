"""The Redis engine: every sale and order operation, one atomic script each."""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from flashsale import errors
from flashsale.engine.booking_fields import BOOKING_FIELD_NAMES, booking_fields, booking_policy
from flashsale.engine.coalescer import Coalescer
from flashsale.engine.keys import Keyspace, SaleKeys, booking_slot
from flashsale.engine.scripts import Scripts
from flashsale.engine.sold_out import SoldOutGate
from flashsale.engine.wire import Wire
from flashsale.fcodes.release import RELEASE_FIELD_NAMES, release_fields
from flashsale.ids import new_order_id, sale_of_order
from flashsale.models import (
    DEFAULT_CURRENCY,
    DEFAULT_RATE_PER_ADDRESS,
    DEFAULT_RATE_PER_USER,
    Order,
    OrderStatus,
    RateLimit,
    SaleCounters,
    SaleDefinition,
    SaleState,
    SaleView,
    iso,
)
from flashsale.opening.fields import OPENING_FIELD_NAMES, opening_fields, opening_policy
from flashsale.opening.tickets import Ticketed

_SALE_FIELDS = (
    "sku", "name", "price_cents", "stock", "per_user_limit", "starts_ms", "ends_ms", "ttl_s",
    "state", "available", "reserved", "paid", "expired", "cancelled", "fcode_stock",
    "fcode_opens_ms", "fcode_available", "fcode_failures", "admission", "bk_opens_ms",
    "bk_closes_ms", "bk_required", "bk_capacity", "adm_ratio", "adm_window_s", "lottery_seed",
    "bookings", "adm_slots", "rl_user_rate", "rl_user_burst", "rl_addr_rate", "rl_addr_burst",
    "currency", "paid_late", "op_win_ms", "op_seed", "op_tickets", "fc_release_ms",
    "fcode_released",
)  # fmt: skip

_CANCEL_ERRORS: dict[str, type[errors.FlashsaleError]] = {
    "order_not_found": errors.OrderNotFound,
    "order_expired": errors.OrderExpired,
    "order_paid": errors.OrderPaid,
}

_BUY_ERRORS: dict[str, type[errors.FlashsaleError]] = {
    "sale_not_found": errors.SaleNotFound,
    "sale_ended": errors.SaleEnded,
    "sale_not_open": errors.SaleNotOpen,
    "sale_paused": errors.SalePaused,
    "idempotency_key_reused": errors.IdempotencyKeyReused,
    "fcode_invalid": errors.FcodeInvalid,
    "fcode_used": errors.FcodeUsed,
    "fcode_revoked": errors.FcodeRevoked,
    "booking_required": errors.BookingRequired,
    "admission_passed": errors.AdmissionPassed,
    "fcode_lane_closed": errors.FcodeLaneClosed,
}


def _rate_limit(fields: dict[str, str], who: str, default: RateLimit) -> RateLimit:
    rate = fields.get(f"rl_{who}_rate")
    if rate is None:  # a sale armed before rate limits existed
        return default
    return RateLimit(rate=float(rate), burst=int(fields[f"rl_{who}_burst"]))


@dataclass(frozen=True, slots=True)
class FcodeLimits:
    """How many F-code guesses a user or an address may send per window before a pause; 0 is
    no limit. A guess is a code the shopper may not use (unknown here, or bound to someone
    else); a used or revoked code is a real one and never counts."""

    per_user: int = 5
    per_address: int = 0
    window_s: int = 60


@dataclass(frozen=True, slots=True)
class BuyOutcome:
    order: Order
    replayed: bool


@dataclass(frozen=True, slots=True)
class Queued:
    """A buy by a shopper not yet admitted: nothing was reserved; this is their place."""

    ahead: int  # shoppers before them still waiting
    booking_no: int | None  # None: not booked (booking is optional), behind every booked one
    admission_rate: float  # ranks admitted per second, over the last minute
    next_window_close_ms: int  # 0: no admission window is open
    now_ms: int


def retry_after_s(wait_us: int) -> int:
    """A wait in microseconds as a Retry-After: whole seconds, rounded up, at least 1."""
    return max(1, -(-wait_us // 1_000_000))


def request_fingerprint(quantity: int, fcode_digest: str) -> str:
    """What makes two buys "the same request" for an Idempotency-Key."""
    request = f"quantity={quantity};fcode={fcode_digest}".encode()
    return hashlib.blake2b(request, digest_size=12).hexdigest()


class Engine:
    """Sales and orders in Redis. Every method is one atomic script or one read."""

    def __init__(
        self,
        redis: Redis,
        keyspace: Keyspace,
        *,
        sold_out_recheck_s: float,
        idempotency_ttl_s: int,
        fcode_limits: FcodeLimits | None = None,
        wire: Wire | None = None,
        default_currency: str = DEFAULT_CURRENCY,
    ) -> None:
        self.redis = redis
        # the calls of the hot path (buy, pay, cancel, book) share one pipeline per loop tick
        self.calls = Coalescer(redis, wire=wire)
        self.keys = keyspace
        self.scripts = Scripts()
        self.sold_out = SoldOutGate(sold_out_recheck_s)
        self._idempotency_ttl_s = idempotency_ttl_s
        self._fcode_limits = fcode_limits or FcodeLimits()
        # the currency of a sale armed before sales had one
        self.default_currency = default_currency
        self._terms: dict[str, tuple[int, str]] = {}  # sale id -> (price_cents, currency)

    # -- sales ---------------------------------------------------------------------------------

    async def arm_sale(self, sale: SaleDefinition, state: SaleState = SaleState.ACTIVE) -> bool:
        """Put a sale into Redis; False when it was armed already (nothing changes then)."""
        # Index first: a sale the writer cannot find would strand its orders in the stream.
        await self.redis.sadd(self.keys.sales_index, sale.sale_id)
        fields = {**sale_fields(sale), "state": state.value}
        args: list[str | int | float] = [
            opening_wave(sale),
            *(x for pair in fields.items() for x in pair),
        ]
        k = self.keys.sale(sale.sale_id)
        armed = await self.scripts.arm_sale(self.redis, [k.sale, k.waves], args)
        return bool(armed)

    async def sale_ids(self) -> list[str]:
        members = cast(set[str], await self.redis.smembers(self.keys.sales_index))
        return sorted(members)

    async def get_sale(self, sale_id: str) -> SaleView:
        values = await self.redis.hmget(self.keys.sale(sale_id).sale, _SALE_FIELDS)
        if values[0] is None:
            raise errors.SaleNotFound()
        f = cast(dict[str, str], dict(zip(_SALE_FIELDS, values, strict=True)))
        definition = SaleDefinition(
            sale_id=sale_id,
            sku=f["sku"],
            name=f["name"],
            price_cents=int(f["price_cents"]),
            stock=int(f["stock"]),
            per_user_limit=int(f["per_user_limit"]),
            starts_ms=int(f["starts_ms"]),
            ends_ms=int(f["ends_ms"]),
            reservation_ttl_s=int(f["ttl_s"]),
            fcode_stock=int(f["fcode_stock"] or 0),
            fcode_opens_ms=int(f["fcode_opens_ms"] or f["starts_ms"]),
            booking=booking_policy(f),
            rate_per_user=_rate_limit(f, "user", DEFAULT_RATE_PER_USER),
            rate_per_address=_rate_limit(f, "addr", DEFAULT_RATE_PER_ADDRESS),
            currency=f["currency"] or self.default_currency,
            opening=opening_policy(f),
            fcode_release_ms=int(f["fc_release_ms"]) if f["fc_release_ms"] else None,
        )
        # the queue's length: its bookings, or an opening window's tickets
        queue_length = int(f["op_tickets"] or 0) if definition.opening else int(f["bookings"] or 0)
        counters = SaleCounters(
            available=int(f["available"]),
            reserved=int(f["reserved"]),
            paid=int(f["paid"]),
            expired=int(f["expired"]),
            cancelled=int(f["cancelled"]),
            fcode_available=int(f["fcode_available"] or 0),
            fcode_failures=int(f["fcode_failures"] or 0),
            paid_late=int(f["paid_late"] or 0),
            bookings=int(f["bookings"] or 0),
            admitted=min(int(f["adm_slots"] or 0), queue_length),
            fcode_released=int(f["fcode_released"] or 0),
            tickets=int(f["op_tickets"] or 0),
        )
        return SaleView(definition=definition, state=SaleState(f["state"]), counters=counters)

    async def sale_terms(self, sale_id: str) -> tuple[int, str]:
        """The sale's price (cents) and currency. Neither ever changes, so each process reads
        them once a sale."""
        terms = self._terms.get(sale_id)
        if terms is None:
            price, currency = cast(
                list[str | None],
                await self.redis.hmget(self.keys.sale(sale_id).sale, ["price_cents", "currency"]),
            )
            if price is None:
                raise errors.SaleNotFound()
            terms = self._terms[sale_id] = (int(price), currency or self.default_currency)
        return terms

    async def set_state(self, sale_id: str, state: SaleState) -> None:
        k = self.keys.sale(sale_id)
        result = await self.scripts.set_state(self.redis, [k.sale, k.waves], [state.value])
        if result[0] == "sale_not_found":
            raise errors.SaleNotFound()
        if result[0] == "sale_ended":
            raise errors.SaleEnded("the sale is closed; a closed sale cannot be paused or resumed")
        if state is SaleState.ACTIVE:
            self.sold_out.clear(sale_id)

    async def edit_sale(self, sale: SaleDefinition, *, needs_no_bookings: bool) -> None:
        """Give a sale that has not opened yet the definition ``sale``, in one script (see
        lua/edit_sale.lua); ``needs_no_bookings``: the change would strand bookings. Raises
        SaleNotFound, SaleEnded (closed) or SaleNotEditable saying why not."""
        fields = sale_fields(sale)
        old_names = BOOKING_FIELD_NAMES | OPENING_FIELD_NAMES | RELEASE_FIELD_NAMES
        dropped = sorted(old_names - fields.keys())
        capacity = sale.booking.capacity or 0 if sale.booking is not None else 0
        k = self.keys.sale(sale.sale_id)
        result = await self.scripts.edit_sale(
            self.redis,
            [k.sale, k.waves],
            [opening_wave(sale), int(needs_no_bookings), capacity, len(dropped), *dropped,
             *(x for pair in fields.items() for x in pair)],
        )  # fmt: skip
        if result[0] != "ok":
            raise _not_editable(sale.sale_id, "cannot be edited", result)
        self._terms.pop(sale.sale_id, None)
        self.sold_out.clear(sale.sale_id)

    async def delete_sale(self, sale_id: str) -> None:
        """Remove a sale that never opened and holds nothing (lua/delete_sale.lua), then take
        it out of the index. Raises SaleNotFound or SaleNotEditable saying why not."""
        k = self.keys.sale(sale_id)
        result = await self.scripts.delete_sale(
            self.redis,
            [k.sale, k.holders, k.deadlines, k.events, k.dead_letters, k.fcodes, k.waves,
             k.queue_holders, k.queue_bits, k.reported],
            [],
        )  # fmt: skip
        if result[0] != "ok":
            raise _not_editable(sale_id, "cannot be deleted", result)
        await self.redis.srem(self.keys.sales_index, sale_id)
        self._terms.pop(sale_id, None)
        self.sold_out.clear(sale_id)

    async def last_deadline_ms(self, sale_id: str) -> int | None:
        """When the sale's last unpaid reservation expires; None when none is unpaid."""
        last = cast(
            list[tuple[str, float]],
            await self.redis.zrange(self.keys.sale(sale_id).deadlines, -1, -1, withscores=True),
        )
        return int(last[0][1]) if last else None

    # -- orders --------------------------------------------------------------------------------

    async def buy(
        self,
        sale_id: str,
        user_id: str,
        quantity: int,
        idempotency_key: str | None = None,
        *,
        fcode_digest: str = "",
        client_address: str = "",
    ) -> BuyOutcome | Queued | Ticketed:
        """Reserve ``quantity`` units for ``user_id``, or raise the error saying why not.

        With ``fcode_digest`` the buy is in the F-code lane: the code is checked and consumed
        and the unit comes from the F-code stock. In a sale with a booking queue, a shopper not
        yet admitted gets their place (:class:`Queued`) and nothing is reserved; in a sale with
        an opening window, their ticket (:class:`Ticketed`)."""
        public = not fcode_digest
        # The memory answers only public buys without a key. An F-code buyer must still hear
        # about a wrong code, not "sold out" of the public lane; and a keyed buy may be the
        # retry of one that reserved, whose first answer stands whatever the sale's state now:
        # only the script, which looks up the key before anything else, can tell.
        if public and idempotency_key is None and self.sold_out.is_sold_out(sale_id):
            raise errors.SoldOut()
        k = self.keys.sale(sale_id)
        order_id = new_order_id(sale_id)
        if idempotency_key is None:
            fingerprint, idem_key = "", k.idempotency(user_id, "")
        else:
            fingerprint = request_fingerprint(quantity, fcode_digest)
            idem_key = k.idempotency(user_id, idempotency_key)
        limits = self._fcode_limits
        bucket, booking_field = booking_slot(user_id)
        result = await self.scripts.buy(
            self.calls,
            [
                k.sale, k.holders, k.deadlines, k.events, k.order(order_id), idem_key, k.fcodes,
                k.fcode_failures_of_user(user_id), k.fcode_failures_of_address(client_address),
                k.booking_bucket(bucket), k.waves, k.queue_holders, k.queue_bits,
                k.requests_of_user(user_id), k.requests_of_address(client_address),
                k.ticket_bucket(bucket), k.ticket_roll,
            ],
            [
                user_id, quantity, order_id, fingerprint, self._idempotency_ttl_s, fcode_digest,
                limits.per_user, limits.per_address, limits.window_s, booking_field,
            ],
        )  # fmt: skip
        word = result[0]
        if word == "ticketed":
            return Ticketed.from_script(result)
        if word == "queued":
            _, ahead, booking_no, rate, next_ms, now = result
            return Queued(
                ahead=int(ahead), booking_no=int(booking_no) if booking_no else None,
                admission_rate=float(rate), next_window_close_ms=int(next_ms), now_ms=int(now),
            )  # fmt: skip
        if word in ("ok", "replay"):
            _, oid, qty, created_ms, expires_ms, campaign = result
            price, currency = self._terms.get(sale_id) or await self.sale_terms(sale_id)
            order = Order(
                order_id=oid, sale_id=sale_id, user_id=user_id, quantity=int(qty),
                status=OrderStatus.RESERVED, created_ms=int(created_ms),
                expires_ms=int(expires_ms), updated_ms=int(created_ms), campaign=str(campaign),
                amount_cents=price * int(qty), currency=currency,
            )  # fmt: skip
            if word == "ok":
                return BuyOutcome(order=order, replayed=False)
            return BuyOutcome(order=await self._as_it_is_now(order), replayed=True)
        raise self._buy_error(sale_id, result, public=public)

    async def _as_it_is_now(self, order: Order) -> Order:
        """A replayed order as it is now: paid, cancelled or expired since the first answer.

        The script cannot read the order's hash itself (its name is known only once the key's
        record is read, and every key reaches a script through KEYS), so a replay, which is
        rare, costs a second round trip; a new reservation never does."""
        fields = cast(
            dict[str, str],
            await self.redis.hgetall(self.keys.sale(order.sale_id).order(order.order_id)),
        )
        if fields.get("user") != order.user_id:  # not there (any more): the first answer stands
            return order
        terms = await self.sale_terms(order.sale_id)
        return _order_from_fields(order.order_id, order.sale_id, order.user_id, fields, terms)

    def _buy_error(
        self, sale_id: str, result: list[str | int], *, public: bool
    ) -> errors.FlashsaleError:
        word = result[0]
        if word == "sold_out":
            available = int(result[1])
            if available <= 0:
                if public:
                    self.sold_out.mark(sale_id)
                    return errors.SoldOut()
                return errors.SoldOut(
                    "the units set aside for F-codes are sold out; the code stays unused"
                )
            return errors.SoldOut(f"only {available} unit(s) left; ask for fewer")
        if word == "limit_reached":
            held, limit = int(result[1]), int(result[2])
            return errors.LimitReached(
                f"you hold {held} of at most {limit} unit(s) allowed per shopper"
            )
        if word == "quantity_above_limit":
            return errors.InvalidRequest(f"quantity must be at most {int(result[1])} for this sale")
        if word == "fcode_throttled":
            return errors.FcodeThrottled(retry_after_s=retry_after_s(int(result[1]) * 1000))
        if word == "rate_limited":
            return errors.RateLimited(retry_after_s=retry_after_s(int(result[1])))
        return _BUY_ERRORS[str(word)]()

    async def cancel(self, order_id: str, user_id: str) -> Order:
        """Cancel a reserved order of ``user_id``: its units return to the sale at once."""
        sale_id = sale_of_order(order_id)
        if sale_id is None:
            raise errors.OrderNotFound()
        k = self.keys.sale(sale_id)
        result = await self.scripts.cancel(
            self.calls,
            [
                k.sale,
                k.holders,
                k.deadlines,
                k.events,
                k.order(order_id),
                k.fcodes,
                k.queue_holders,
                k.queue_bits,
            ],
            [order_id, user_id],
        )
        word = result[0]
        if word == "order_not_found":
            raise errors.OrderNotFound()
        _, status, qty, created_ms, expires_ms, updated_ms, campaign = result
        if status != OrderStatus.PAID.value:
            # units came back to the sale through this process: sell them again at once
            self.sold_out.clear(sale_id)
        if word != "ok":
            raise _CANCEL_ERRORS[str(word)]()
        price, currency = await self.sale_terms(sale_id)
        return Order(
            order_id=order_id, sale_id=sale_id, user_id=user_id, quantity=int(qty),
            status=OrderStatus(status), created_ms=int(created_ms), expires_ms=int(expires_ms),
            updated_ms=int(updated_ms), campaign=str(campaign),
            amount_cents=price * int(qty), currency=currency,
        )  # fmt: skip

    async def release_unconfirmed(self, order: Order, idempotency_key: str | None) -> None:
        """Undo a reservation whose buy could not be confirmed (confirm mode "postgres").

        The order is cancelled (its units return, and PostgreSQL learns it through the events
        stream), and its Idempotency-Key forgotten so that a retry is a fresh attempt.
        """
        with contextlib.suppress(errors.FlashsaleError):  # expired meanwhile: units went back
            await self.cancel(order.order_id, order.user_id)
        if idempotency_key is not None:
            await self.redis.delete(
                self.keys.sale(order.sale_id).idempotency(order.user_id, idempotency_key)
            )

    async def get_order(self, order_id: str, user_id: str) -> Order:
        """The order, for its owner only: anyone else is told it does not exist."""
        sale_id = sale_of_order(order_id)
        if sale_id is None:
            raise errors.OrderNotFound()
        o = cast(dict[str, str], await self.redis.hgetall(self.keys.sale(sale_id).order(order_id)))
        if not o or o.get("user") != user_id:
            raise errors.OrderNotFound()
        return _order_from_fields(order_id, sale_id, user_id, o, await self.sale_terms(sale_id))

    # -- expiry ----------------------------------------------------------------------------------

    async def expire_due(self, sale_id: str, now_ms: int, limit: int) -> tuple[int, int]:
        """Expire up to ``limit`` reservations due by ``now_ms``; (candidates seen, expired)."""
        k: SaleKeys = self.keys.sale(sale_id)
        due = cast(
            list[str],
            await self.redis.zrangebyscore(k.deadlines, "-inf", now_ms, start=0, num=limit),
        )
        if not due:
            return 0, 0
        expired = await self.scripts.expire(
            self.redis,
            [
                k.sale,
                k.holders,
                k.deadlines,
                k.fcodes,
                k.queue_holders,
                k.queue_bits,
                *(k.order(o) for o in due),
                k.events,
            ],
            [*due],
        )
        if expired:
            self.sold_out.clear(sale_id)
        return len(due), int(expired)


_LANES = {"sale": "the sale opened", "fcode": "its F-code lane opened",
          "booking": "its booking opened", "queue": "its opening window opened"}  # fmt: skip


def _not_editable(sale_id: str, what: str, result: list[str | int]) -> errors.FlashsaleError:
    """The error of a refused edit or delete script: ``what`` is "cannot be edited" or
    "cannot be deleted"."""
    word = result[0]
    if word == "sale_not_found":
        return errors.SaleNotFound()
    if word == "sale_ended":
        return errors.SaleEnded(f"sale {sale_id!r} is closed: it {what}")
    n = int(result[-1])
    if word == "opened":
        why = f"{_LANES[str(result[1])]} at {iso(n)}"
        if what == "cannot be edited":
            why += ": pause or close it instead"
    elif word == "orders_exist":
        why = f"{n} unit(s) of it were ordered"
    elif word == "bookings_exist":
        why = (f"{n} booking(s) were taken (imported): its booking policy, admission and "
               "lottery seed stay as they are")  # fmt: skip
    elif word == "above_capacity":
        why = f"{n} booking(s) were taken (imported): booking_capacity may not be below that"
    elif word == "fcodes_exist":
        why = f"{n} F-code(s) were issued for it"
    else:  # dead_letters_exist
        why = f"{n} event(s) of it are set aside as dead letters"
    return errors.SaleNotEditable(f"sale {sale_id!r} {what}: {why}")


def _order_from_fields(
    order_id: str, sale_id: str, user_id: str, o: dict[str, str], terms: tuple[int, str]
) -> Order:
    """An order from its Redis hash; ``terms`` are its sale's price and currency."""
    price, currency = terms
    return Order(
        order_id=order_id, sale_id=sale_id, user_id=user_id, quantity=int(o["qty"]),
        status=OrderStatus(o["status"]), created_ms=int(o["created_ms"]),
        expires_ms=int(o["expires_ms"]), updated_ms=int(o["updated_ms"]),
        campaign=o.get("campaign", ""), amount_cents=price * int(o["qty"]), currency=currency,
    )  # fmt: skip


def sale_fields(sale: SaleDefinition) -> dict[str, str | int | float]:
    """The sale hash fields of a sale that has sold nothing yet: its definition and its
    starting counters (``state`` aside). Arming a sale writes them; so does an edit before
    the sale opens."""
    return {
        "sku": sale.sku,
        "name": sale.name,
        "price_cents": sale.price_cents,
        "stock": sale.stock,
        "per_user_limit": sale.per_user_limit,
        "starts_ms": sale.starts_ms,
        "ends_ms": sale.ends_ms,
        "ttl_s": sale.reservation_ttl_s,
        "fcode_stock": sale.fcode_stock,
        "fcode_opens_ms": sale.fcode_opens_at_ms,
        "available": sale.stock - sale.fcode_stock,
        "fcode_available": sale.fcode_stock,
        "rl_user_rate": sale.rate_per_user.rate,
        "rl_user_burst": sale.rate_per_user.burst,
        "rl_addr_rate": sale.rate_per_address.rate,
        "rl_addr_burst": sale.rate_per_address.burst,
        "currency": sale.currency,
        **booking_fields(sale),
        **opening_fields(sale),  # after the booking's: an opening window's admission wins
        **release_fields(sale),
    }


def opening_wave(sale: SaleDefinition) -> str:
    """The admission wave of a queued sale's opening, "1:<starts_ms>" (an opening window's
    queue: "1:<the window's close>"); "" for other sales."""
    if sale.opening is not None:
        return f"1:{sale.draw_ms}"
    queued = sale.booking is not None and sale.booking.admission.queued
    return f"1:{sale.starts_ms}" if queued else ""


def now_ms() -> int:
    return time.time_ns() // 1_000_000
