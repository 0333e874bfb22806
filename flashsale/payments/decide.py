"""The decision on a payment: one atomic script in Redis (engine/lua/pay.lua, which documents
the outcomes), recorded under the payment id and the webhook-id, so that a payment sent again
is answered as the first time and changes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from flashsale.engine.engine import Engine
from flashsale.ids import sale_of_order
from flashsale.payments.notifications import Notification
from flashsale.payments.store import PaymentRow
from flashsale.store.orders import OrderRow

_ORDER_FIELDS = ("user", "qty", "status", "v", "created_ms", "updated_ms", "expires_ms",
                 "fcode", "campaign")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Decided:
    payment: PaymentRow
    replayed: bool  # decided before: this is the first decision


async def decide(
    engine: Engine, notice: Notification, received_ms: int, *, webhook_ttl_s: int
) -> Decided | None:
    """Decide ``notice``'s payment, or find the decision made before. None when the order id
    names no armed sale (there is nothing in Redis to decide it against: see
    ``store.record_without_sale``). ``webhook_ttl_s``: how long the webhook-id is kept."""
    sale_id = sale_of_order(notice.order_id)
    if sale_id is None:
        return None
    k = engine.keys.sale(sale_id)
    result = await engine.scripts.pay(
        engine.redis,
        [
            k.sale, k.holders, k.deadlines, k.events, k.order(notice.order_id), k.fcodes,
            k.queue_holders, k.queue_bits, k.payment(notice.payment_id),
            k.webhook(notice.webhook_id),
        ],
        [
            notice.order_id, notice.payment_id, notice.amount_cents, notice.currency,
            notice.webhook_id, received_ms, engine.default_currency, webhook_ttl_s,
        ],
    )  # fmt: skip
    if result[0] == "no_sale":
        return None
    if int(result[2]):  # an expired reservation's units came back through this process
        engine.sold_out.clear(sale_id)
    return Decided(PaymentRow.from_record(sale_id, result[1]), replayed=result[0] == "replay")


async def order_now(engine: Engine, sale_id: str, order_id: str) -> OrderRow | None:
    """The order as Redis holds it now, as a row for PostgreSQL; None when there is none."""
    values = cast(
        list[str | None],
        await engine.redis.hmget(engine.keys.sale(sale_id).order(order_id), _ORDER_FIELDS),
    )
    if values[0] is None:
        return None
    f = cast(dict[str, str], dict(zip(_ORDER_FIELDS, values, strict=True)))
    return OrderRow(
        order_id=order_id, sale_id=sale_id, user_id=f["user"], quantity=int(f["qty"]),
        status=f["status"], version=int(f["v"]), created_ms=int(f["created_ms"]),
        updated_ms=int(f["updated_ms"]), expires_ms=int(f["expires_ms"]),
        fcode=f["fcode"] or "", campaign=f["campaign"] or "",
    )  # fmt: skip
