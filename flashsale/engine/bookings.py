"""Bookings in Redis: take one, import a list, say where a shopper stands, move admission on."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from flashsale import errors
from flashsale.booking import lottery
from flashsale.booking.status import (
    BookingStatus,
    QueueFacts,
    arrival_standing,
    queued_standing,
)
from flashsale.engine.engine import Engine, retry_after_s
from flashsale.engine.keys import booking_slot
from flashsale.models import Admission, iso
from flashsale.opening import shuffle

log = logging.getLogger(__name__)

_BOOK_ERRORS: dict[str, type[errors.FlashsaleError]] = {
    "sale_not_found": errors.SaleNotFound,
    "booking_not_offered": errors.BookingNotOffered,
}

_STATUS_FIELDS = (
    "state", "starts_ms", "ends_ms", "available", "reserved", "admission", "bookings",
    "adm_slots", "adm_cursor", "adm_window_s", "adm_rate", "adm_next_ms", "lottery_seed",
    "fc_lane", "fcode_available", "op_win_ms", "op_tickets", "op_n", "op_seed",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Booking:
    booking_no: int
    new: bool
    booked_ms: int | None  # known for a booking taken now


@dataclass(frozen=True, slots=True)
class ImportedBatch:
    numbers: list[int]  # each shopper's booking number, 0 when refused for capacity
    new: int
    full: bool


@functools.lru_cache(maxsize=16)
def _draw(seed: str, n: int) -> lottery.Draw:
    return lottery.Draw(seed, n)


class Bookings:
    """Booking operations; one atomic script or one read each, on the engine's Redis."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.redis = engine.redis
        self.keys = engine.keys
        self.scripts = engine.scripts

    async def book(self, sale_id: str, user_id: str, client_address: str = "") -> Booking:
        k = self.keys.sale(sale_id)
        bucket, field = booking_slot(user_id)
        result = await self.scripts.book(
            self.engine.calls,
            [k.sale, k.booking_bucket(bucket), k.events, k.requests_of_user(user_id),
             k.requests_of_address(client_address)],
            [field, user_id],
        )  # fmt: skip
        word = result[0]
        if word == "new":
            return Booking(booking_no=int(result[1]), new=True, booked_ms=int(result[2]))
        if word == "exists":
            return Booking(booking_no=int(result[1]), new=False, booked_ms=None)
        raise _book_error(result)

    async def book_many(self, sale_id: str, user_ids: Sequence[str]) -> ImportedBatch:
        """Book every shopper of ``user_ids`` (a batch of an imported list), idempotently."""
        k = self.keys.sale(sale_id)
        slots = [booking_slot(u) for u in user_ids]
        result = await self.scripts.book_many(
            self.redis, [k.sale, *(k.booking_bucket(b) for b, _ in slots)], [f for _, f in slots]
        )
        word = result[0]
        if word not in ("ok", "booking_full"):
            raise _book_error(result)
        return ImportedBatch(
            numbers=[int(x) for x in result[2:]], new=int(result[1]), full=word == "booking_full"
        )

    async def admit(self, sale_id: str) -> tuple[int, int, int]:
        """Close ended admission windows and admit the next in line:
        (places freed, ranks admitted now, ranks admitted so far)."""
        k = self.keys.sale(sale_id)
        freed, admitted, frontier, released = await self.scripts.admit(
            self.redis, [k.sale, k.waves, k.queue_bits, k.deadlines], []
        )
        if int(released) >= 0:  # the F-code lane's release was made now (admit.lua)
            log.info("sale %s: %d unredeemed F-code unit(s) passed to the public lane",
                     sale_id, int(released))  # fmt: skip
            self.engine.sold_out.clear(sale_id)
        return int(freed), int(admitted), int(frontier)

    async def status(self, sale_id: str, user_id: str) -> BookingStatus:
        k = self.keys.sale(sale_id)
        bucket, field = booking_slot(user_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            _ = pipe.hget(k.booking_bucket(bucket), field)
            _ = pipe.hmget(k.sale, _STATUS_FIELDS)
            _ = pipe.hget(k.holders, user_id)
            _ = pipe.hget(k.ticket_bucket(bucket), field)
            _ = pipe.time()
            raw_no, values, held, raw_ticket, (seconds, micros) = await pipe.execute()
        f = cast(dict[str, str | None], dict(zip(_STATUS_FIELDS, values, strict=True)))
        if f["state"] is None:
            raise errors.SaleNotFound()
        if not f["admission"]:
            raise errors.BookingNotOffered()
        if raw_no is None:
            raise errors.BookingNotFound()
        booking_no, admission = int(raw_no), Admission(f["admission"])
        now_ms = seconds * 1000 + micros // 1000
        starts_ms = int(f["starts_ms"] or 0)
        over = f["state"] == "closed" or now_ms >= int(f["ends_ms"] or 0)
        status = functools.partial(BookingStatus, sale_id, user_id, booking_no, admission)
        holds = int(held or 0) > 0
        window_ms = int(f["op_win_ms"] or 0)
        if not admission.queued and not (window_ms and raw_ticket is not None):
            return status(None, arrival_standing(now_ms, starts_ms, over, holds))
        if admission.queued:
            queue_size = int(f["bookings"] or 0)
            rank: int | None = booking_no
            if admission is Admission.LOTTERY:
                seed = f["lottery_seed"] or ""
                rank = _draw(seed, queue_size).rank(booking_no) if now_ms >= starts_ms else None
        else:  # an arrival sale's opening window: the shopper's place is their ticket's
            queue_size = int(f["op_tickets"] or 0)
            ticket = int(raw_ticket)
            # op_n is set by the first script after the window; until then every ticket so
            # far was given within it
            drawn = int(f["op_n"] or 0) or queue_size
            rank = (
                shuffle.rank(f["op_seed"] or "", drawn, ticket)
                if now_ms >= starts_ms + window_ms
                else None
            )
            starts_ms += window_ms  # the draw is this queue's opening
            status = functools.partial(status, ticket=ticket)
        facts = QueueFacts(
            now_ms=now_ms, starts_ms=starts_ms, over=over,
            exhausted=int(f["available"] or 0) <= 0 and int(f["reserved"] or 0) <= 0
            # F-code units still to pass to the public lane can come back too
            and not (f["fc_lane"] not in (None, "closed") and int(f["fcode_available"] or 0) > 0),
            frontier=min(int(f["adm_slots"] or 0), queue_size),
            everyone_admitted=int(f["adm_slots"] or 0) >= queue_size,
            cursor=int(f["adm_cursor"] or 1), window_ms=int(f["adm_window_s"] or 0) * 1000,
            rate_per_s=float(f["adm_rate"] or 0), next_free_ms=int(f["adm_next_ms"] or 0),
        )  # fmt: skip
        admitted_ms, holding = None, holds
        if rank is not None:
            async with self.redis.pipeline(transaction=False) as pipe:
                _ = pipe.zrevrangebyscore(k.waves, rank, "-inf", start=0, num=1)
                _ = pipe.getbit(k.queue_bits, rank)
                wave, bit = await pipe.execute()
            holding = bool(bit)
            if wave:
                admitted_ms = int(str(wave[0]).partition(":")[2])
        return status(rank, queued_standing(facts, rank, admitted_ms, holding))


def _book_error(result: list[str | int]) -> errors.FlashsaleError:
    word = str(result[0])
    if word == "booking_not_open":
        return errors.BookingNotOpen(f"booking opens at {iso(int(result[1]))}")
    if word == "booking_closed":
        return errors.BookingClosed(f"booking closed at {iso(int(result[1]))}")
    if word == "booking_full":
        return errors.BookingFull(f"all {int(result[1])} booking places have been taken")
    if word == "rate_limited":
        return errors.RateLimited(retry_after_s=retry_after_s(int(result[1])))
    return _BOOK_ERRORS[word]()
