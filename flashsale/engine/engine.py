"""The Redis engine: every sale and order operation, one atomic script each."""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

from flashsale import errors
from flashsale.engine.keys import Keyspace, SaleKeys
from flashsale.engine.scripts import Scripts
from flashsale.engine.sold_out import SoldOutGate
from flashsale.ids import new_order_id, sale_of_order
from flashsale.models import (
    Order,
    OrderStatus,
    SaleCounters,
    SaleDefinition,
    SaleState,
    SaleView,
)

_SALE_FIELDS = (
    "sku", "name", "price_cents", "stock", "per_user_limit", "starts_ms", "ends_ms", "ttl_s",
    "state", "available", "reserved", "paid", "expired", "cancelled",
)  # fmt: skip

_SETTLE_ERRORS: dict[str, type[errors.FlashsaleError]] = {
    "order_not_found": errors.OrderNotFound,
    "order_expired": errors.OrderExpired,
    "order_cancelled": errors.OrderCancelled,
    "order_paid": errors.OrderPaid,
}


@dataclass(frozen=True, slots=True)
class BuyOutcome:
    order: Order
    replayed: bool


def request_fingerprint(quantity: int) -> str:
    """What makes two buys "the same request" for an Idempotency-Key."""
    return hashlib.blake2b(f"quantity={quantity}".encode(), digest_size=12).hexdigest()


class Engine:
    """Sales and orders in Redis. Every method is one atomic script or one read."""

    def __init__(
        self, redis: Redis, keyspace: Keyspace, *, sold_out_recheck_s: float, idempotency_ttl_s: int
    ) -> None:
        self.redis = redis
        self.keys = keyspace
        self.scripts = Scripts()
        self.sold_out = SoldOutGate(sold_out_recheck_s)
        self._idempotency_ttl_s = idempotency_ttl_s

    # -- sales ---------------------------------------------------------------------------------

    async def arm_sale(self, sale: SaleDefinition, state: SaleState = SaleState.ACTIVE) -> bool:
        """Put a sale into Redis; False when it was armed already (nothing changes then)."""
        # Index first: a sale the writer cannot find would strand its orders in the stream.
        await self.redis.sadd(self.keys.sales_index, sale.sale_id)
        fields: dict[str, str | int] = {
            "sku": sale.sku,
            "name": sale.name,
            "price_cents": sale.price_cents,
            "stock": sale.stock,
            "per_user_limit": sale.per_user_limit,
            "starts_ms": sale.starts_ms,
            "ends_ms": sale.ends_ms,
            "ttl_s": sale.reservation_ttl_s,
            "state": state.value,
        }
        args: list[str | int | float] = [x for pair in fields.items() for x in pair]
        armed = await self.scripts.arm_sale(self.redis, [self.keys.sale(sale.sale_id).sale], args)
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
        )
        counters = SaleCounters(
            available=int(f["available"]),
            reserved=int(f["reserved"]),
            paid=int(f["paid"]),
            expired=int(f["expired"]),
            cancelled=int(f["cancelled"]),
        )
        return SaleView(definition=definition, state=SaleState(f["state"]), counters=counters)

    async def set_state(self, sale_id: str, state: SaleState) -> None:
        result = await self.scripts.set_state(
            self.redis, [self.keys.sale(sale_id).sale], [state.value]
        )
        if result[0] == "sale_not_found":
            raise errors.SaleNotFound()
        if result[0] == "sale_ended":
            raise errors.SaleEnded("the sale is closed; a closed sale cannot be paused or resumed")
        if state is SaleState.ACTIVE:
            self.sold_out.clear(sale_id)

    # -- orders --------------------------------------------------------------------------------

    async def buy(
        self, sale_id: str, user_id: str, quantity: int, idempotency_key: str | None = None
    ) -> BuyOutcome:
        """Reserve ``quantity`` units for ``user_id``, or raise the error saying why not."""
        if self.sold_out.is_sold_out(sale_id):
            raise errors.SoldOut()
        k = self.keys.sale(sale_id)
        order_id = new_order_id(sale_id)
        if idempotency_key is None:
            fingerprint, idem_key = "", k.idempotency(user_id, "")
        else:
            fingerprint, idem_key = (
                request_fingerprint(quantity),
                k.idempotency(user_id, idempotency_key),
            )
        result = await self.scripts.buy(
            self.redis,
            [k.sale, k.holders, k.deadlines, k.events, k.order(order_id), idem_key],
            [user_id, quantity, order_id, fingerprint, self._idempotency_ttl_s],
        )
        word = result[0]
        if word in ("ok", "replay"):
            _, oid, qty, created_ms, expires_ms = result
            order = Order(
                order_id=oid, sale_id=sale_id, user_id=user_id, quantity=int(qty),
                status=OrderStatus.RESERVED, created_ms=int(created_ms),
                expires_ms=int(expires_ms), updated_ms=int(created_ms),
            )  # fmt: skip
            return BuyOutcome(order=order, replayed=word == "replay")
        raise self._buy_error(sale_id, result)

    def _buy_error(self, sale_id: str, result: list[str | int]) -> errors.FlashsaleError:
        word = result[0]
        if word == "sold_out":
            available = int(result[1])
            if available <= 0:
                self.sold_out.mark(sale_id)
                return errors.SoldOut()
            return errors.SoldOut(f"only {available} unit(s) left; ask for fewer")
        if word == "limit_reached":
            held, limit = int(result[1]), int(result[2])
            return errors.LimitReached(
                f"you hold {held} of at most {limit} unit(s) allowed per shopper"
            )
        if word == "quantity_above_limit":
            return errors.InvalidRequest(f"quantity must be at most {int(result[1])} for this sale")
        simple: dict[str, type[errors.FlashsaleError]] = {
            "sale_not_found": errors.SaleNotFound,
            "sale_ended": errors.SaleEnded,
            "sale_not_open": errors.SaleNotOpen,
            "idempotency_key_reused": errors.IdempotencyKeyReused,
        }
        return simple[str(word)]()

    async def settle(self, order_id: str, user_id: str, action: str) -> Order:
        """Pay (``action="pay"``) or cancel (``"cancel"``) an order of ``user_id``."""
        sale_id = sale_of_order(order_id)
        if sale_id is None:
            raise errors.OrderNotFound()
        k = self.keys.sale(sale_id)
        result = await self.scripts.settle(
            self.redis,
            [k.sale, k.holders, k.deadlines, k.events, k.order(order_id)],
            [order_id, user_id, action],
        )
        word = result[0]
        if word == "order_not_found":
            raise errors.OrderNotFound()
        _, status, qty, created_ms, expires_ms, updated_ms = result
        if status != OrderStatus.PAID.value:
            # units came back to the sale through this process: sell them again at once
            self.sold_out.clear(sale_id)
        if word != "ok":
            raise _SETTLE_ERRORS[str(word)]()
        return Order(
            order_id=order_id, sale_id=sale_id, user_id=user_id, quantity=int(qty),
            status=OrderStatus(status), created_ms=int(created_ms), expires_ms=int(expires_ms),
            updated_ms=int(updated_ms),
        )  # fmt: skip

    async def release_unconfirmed(self, order: Order, idempotency_key: str | None) -> None:
        """Undo a reservation whose buy could not be confirmed (confirm mode "postgres").

        The order is cancelled (its units return, and PostgreSQL learns it through the events
        stream), and its Idempotency-Key forgotten so that a retry is a fresh attempt.
        """
        with contextlib.suppress(errors.FlashsaleError):  # expired meanwhile: units went back
            await self.settle(order.order_id, order.user_id, "cancel")
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
        return Order(
            order_id=order_id, sale_id=sale_id, user_id=user_id, quantity=int(o["qty"]),
            status=OrderStatus(o["status"]), created_ms=int(o["created_ms"]),
            expires_ms=int(o["expires_ms"]), updated_ms=int(o["updated_ms"]),
        )  # fmt: skip

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
            [k.sale, k.holders, k.deadlines, *(k.order(o) for o in due), k.events],
            [*due],
        )
        if expired:
            self.sold_out.clear(sale_id)
        return len(due), int(expired)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
