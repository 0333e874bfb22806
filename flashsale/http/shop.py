"""Shopper endpoints: sale status, buy, and the shopper's own orders."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from flashsale import errors
from flashsale.booking.status import estimate_wait_s
from flashsale.engine.engine import BuyOutcome, Queued, now_ms
from flashsale.fcodes import codes
from flashsale.http.opening import ticketed_response
from flashsale.http.responses import json_response
from flashsale.http.services import SERVICES, Services
from flashsale.http.validation import (
    idempotency_key,
    integer,
    path_sale_id,
    read_json_object,
    reject_unknown,
)
from flashsale.models import Order, OrderStatus
from flashsale.opening.tickets import Ticketed
from flashsale.store.orders import OrderRow

log = logging.getLogger(__name__)

_BUY_FIELDS = frozenset({"quantity", "fcode"})
_MAX_QUANTITY = 1000


async def get_sale(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    view = await services.engine.get_sale(path_sale_id(request))
    return json_response({"sale": view.public_json(now_ms())})


async def buy(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    user_id = services.shoppers.user_id(request.headers.get("Authorization"))
    sale_id = path_sale_id(request)
    body = await read_json_object(
        request, services.settings.max_body_bytes, services.settings.body_timeout_s
    )
    reject_unknown(body, _BUY_FIELDS)
    quantity = integer(body, "quantity", default=1, minimum=1, maximum=_MAX_QUANTITY)
    fcode_digest = _fcode_digest(services, body, quantity)
    key = idempotency_key(request)
    outcome = await services.engine.buy(
        sale_id, user_id, quantity, key, fcode_digest=fcode_digest,
        client_address=request.remote or "",
    )  # fmt: skip
    if isinstance(outcome, Queued):
        return _queued_response(outcome)
    if isinstance(outcome, Ticketed):
        return ticketed_response(outcome)
    if services.committer is not None:
        await _confirm_in_postgres(services, outcome, key, fcode_digest)
    response = json_response({"order": outcome.order.to_json()}, status=201)
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _queued_response(queued: Queued) -> web.Response:
    """202: the shopper is in the booking queue, not yet admitted; nothing was reserved."""
    wait_s, lower_bound = estimate_wait_s(
        queued.ahead, queued.admission_rate, queued.next_window_close_ms, queued.now_ms
    )
    response = json_response(
        {
            "status": "queued",
            "booking_no": queued.booking_no,
            "position": queued.ahead,
            "estimated_wait_s": wait_s,
            "wait_is_lower_bound": lower_bound,
        },
        status=202,
    )
    # a polite client polls no faster than the queue can move
    response.headers["Retry-After"] = str(max(1, min(wait_s, 30)))
    return response


def _fcode_digest(services: Services, body: dict[str, object], quantity: int) -> str:
    """The stored form of the F-code in the body, "" without one. A typo is refused here,
    without a Redis round trip."""
    if "fcode" not in body:
        return ""
    raw = body["fcode"]
    if not isinstance(raw, str):
        raise errors.InvalidRequest("'fcode' must be a string")
    try:
        normalized = codes.normalize(raw)
    except codes.MalformedCode as exc:
        raise errors.FcodeMalformed(str(exc)) from None
    if quantity != 1:
        raise errors.InvalidRequest("an F-code buys one unit: leave out 'quantity' or send 1")
    return codes.digest(services.fcode_key, normalized)


async def _confirm_in_postgres(
    services: Services, outcome: BuyOutcome, key: str | None, fcode_digest: str
) -> None:
    """Confirm mode "postgres": answer 201 only once the order row is committed; otherwise
    give the units back and answer 503, so nothing half happens.

    A replay commits the same first row: its first answer may still be waiting for that commit
    (a double click), and a row already there, or already newer, is left as it is."""
    assert services.committer is not None
    order = outcome.order
    try:
        await asyncio.wait_for(
            services.committer.commit(_reserved_row(order, fcode_digest)),
            services.settings.pg_confirm_timeout_s,
        )
    except Exception as exc:
        log.warning("buy %s not confirmed in PostgreSQL: %s", order.order_id, exc)
        if outcome.replayed:  # the order is the first request's: it stays, and so does the key
            raise errors.Unavailable(
                "the order could not be confirmed; try again with the same Idempotency-Key"
            ) from None
        await services.engine.release_unconfirmed(order, key)
        raise errors.Unavailable(
            "the order could not be recorded; nothing was reserved, try again"
        ) from None


def _reserved_row(order: Order, fcode_digest: str) -> OrderRow:
    """The order's first row (version 1, reserved), whatever has happened to it since."""
    return OrderRow(
        order_id=order.order_id, sale_id=order.sale_id, user_id=order.user_id,
        quantity=order.quantity, status=OrderStatus.RESERVED.value, version=1,
        expires_ms=order.expires_ms, created_ms=order.created_ms, updated_ms=order.created_ms,
        fcode=fcode_digest, campaign=order.campaign,
    )  # fmt: skip


async def get_order(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    user_id = services.shoppers.user_id(request.headers.get("Authorization"))
    order = await services.engine.get_order(request.match_info["order_id"], user_id)
    return json_response({"order": order.to_json()})


async def pay(request: web.Request) -> web.Response:
    """Retired: a shopper cannot mark their own order paid. The payment service tells us."""
    raise errors.Gone(
        "shoppers no longer mark orders paid: the shop hands the order (its amount_cents and "
        "currency) to the payment service, whose notification to POST /v1/payments/events "
        "marks it paid; read the order to see it"
    )


async def cancel(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    user_id = services.shoppers.user_id(request.headers.get("Authorization"))
    body = await read_json_object(
        request, services.settings.max_body_bytes, services.settings.body_timeout_s
    )
    reject_unknown(body, frozenset())
    order = await services.engine.cancel(request.match_info["order_id"], user_id)
    return json_response({"order": order.to_json()})
