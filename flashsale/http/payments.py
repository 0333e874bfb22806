"""The payment service's endpoint: ``POST /v1/payments/events``.

Payment notifications arrive signed (Standard Webhooks, flashsale/payments/notifications.py);
each payment is decided once (flashsale/payments/decide.py) and answered 200 with its outcome,
``paid`` or ``refund_required``, so that the payment service does not send a decided payment
again. Only a signature (401) or a body (400) we cannot take is refused, and such a refusal
changes nothing. The answer is sent once the decision is as durable as an order answered 201:
in Redis in confirm mode "redis", committed to PostgreSQL in confirm mode "postgres".
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from aiohttp import web

from flashsale import errors
from flashsale.engine.engine import now_ms
from flashsale.http.responses import json_response
from flashsale.http.services import SERVICES, Services
from flashsale.metrics.tally import TALLY
from flashsale.payments import decide, notifications, store

log = logging.getLogger(__name__)


async def payment_event(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    keys = services.settings.payment_keys
    if not keys:
        raise errors.PaymentsNotConfigured()
    received_ms = now_ms()
    body = await _read_body(
        request, services.settings.max_body_bytes, services.settings.body_timeout_s
    )
    notice = notifications.receive(keys, request.headers, body, time.time())
    decided = await decide.decide(
        services.engine, notice, received_ms, webhook_ttl_s=services.settings.idempotency_ttl_s
    )
    if decided is None:  # no sale of ours: no stream to carry it, so PostgreSQL now
        payment = await store.record_without_sale(services.pool, notice, received_ms)
    else:
        payment = decided.payment
    if decided is None or not decided.replayed:  # counted once, when decided
        late = payment.late and payment.outcome == store.PAID
        TALLY.payment("paid_late" if late else payment.outcome, payment.reason or "none")
    if decided is not None and services.committer is not None:
        await _confirm_in_postgres(services, payment)
    if payment.reason is not None and (decided is None or not decided.replayed):
        # money to give back: worth a line (a paid order is one of thousands)
        log.info("payment %s for order %s: refund required (%s)", payment.payment_id,
                 payment.order_id, payment.reason)  # fmt: skip
    return json_response({"payment": payment.answer_json()})


async def _confirm_in_postgres(services: Services, payment: store.PaymentRow) -> None:
    """Confirm mode "postgres": answer only once the payment row, and its order's row as Redis
    holds it now, are committed. The decision stands in Redis whatever happens here; a 503
    makes the payment service send the notification again, which is answered from that
    decision and committed then (the writer carries it meanwhile too)."""
    assert services.committer is not None
    assert payment.sale_id is not None
    order = await decide.order_now(services.engine, payment.sale_id, payment.order_id)
    try:
        await asyncio.wait_for(
            services.committer.commit(replace(payment, order=order)),
            services.settings.pg_confirm_timeout_s,
        )
    except Exception as exc:
        log.warning("payment %s not confirmed in PostgreSQL: %s", payment.payment_id, exc)
        raise errors.Unavailable(
            "the payment is decided but not yet recorded in PostgreSQL; send it again"
        ) from None


async def _read_body(request: web.Request, max_bytes: int, timeout_s: float) -> bytes:
    """The body exactly as sent: the signature covers these bytes."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise errors.BodyTooLarge(f"the body may hold at most {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await request.content.read(max_bytes + 1 - size):
                size += len(chunk)
                if size > max_bytes:
                    raise errors.BodyTooLarge(f"the body may hold at most {max_bytes} bytes")
                chunks.append(chunk)
    except web.RequestPayloadError as exc:
        raise errors.UnreadableBody(f"the body could not be read: {exc}") from None
    except TimeoutError:
        raise errors.RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)
