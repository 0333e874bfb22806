"""The payment service's side of the hand-off, for the demo, rehearsals and tests: it signs
``payment.succeeded`` notifications as Standard Webhooks and posts them to flashsale.

``signed_notification`` builds one (body and headers, no I/O) for any HTTP client;
``PaymentService`` posts them with aiohttp and, as a payment service does, sends a
notification again under the same webhook-id when the answer was not a decision.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import aiohttp
import orjson

from flashsale.payments.notifications import EVENT_TYPE
from flashsale.webhooks import signing

PATH = "/v1/payments/events"


def new_id(prefix: str) -> str:
    """A fresh id such as a payment service gives: ``pay_...``, ``msg_...``."""
    return f"{prefix}_{secrets.token_hex(12)}"


def signed_notification(
    key: bytes,
    order_id: str,
    amount_cents: int,
    currency: str,
    *,
    payment_id: str | None = None,
    webhook_id: str | None = None,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a notification that ``order_id`` was paid."""
    body = orjson.dumps({
        "type": EVENT_TYPE,
        "data": {
            "order_id": order_id,
            "payment_id": payment_id or new_id("pay"),
            "amount_cents": amount_cents,
            "currency": currency,
        },
    })  # fmt: skip
    stamp = int(time.time()) if timestamp is None else timestamp
    headers = signing.headers_for(key, webhook_id or new_id("msg"), stamp, body)
    return body, {**headers, "Content-Type": "application/json"}


class PaymentService:
    """Pays orders at a flashsale service (``base_url``), signing with ``secret``
    (``whsec_...``)."""

    def __init__(
        self, base_url: str, secret: str, *, session: aiohttp.ClientSession | None = None
    ) -> None:
        self.url = base_url.rstrip("/") + PATH
        self.key = signing.parse_secret(secret)
        self._session = session
        self._own_session = session is None

    async def pay(
        self,
        order_id: str,
        amount_cents: int,
        currency: str,
        *,
        payment_id: str | None = None,
        attempts: int = 5,
    ) -> dict[str, Any]:
        """Notify that ``order_id`` was paid; the decision (``{"outcome", "reason", ...}``).
        A 5xx or a lost connection is tried again under the same webhook-id, freshly signed;
        a 4xx raises ``PaymentRefused``."""
        payment_id = payment_id or new_id("pay")
        webhook_id = new_id("msg")
        pause_s = 0.2
        for attempt in range(1, attempts + 1):
            body, headers = signed_notification(
                self.key, order_id, amount_cents, currency,
                payment_id=payment_id, webhook_id=webhook_id,
            )  # fmt: skip
            try:
                async with self._client().post(self.url, data=body, headers=headers) as resp:
                    answer: dict[str, Any] = await resp.json(content_type=None)
                    if resp.status == 200:
                        payment: dict[str, Any] = answer["payment"]
                        return payment
                    if resp.status < 500:
                        raise PaymentRefused(resp.status, answer)
            except (aiohttp.ClientConnectionError, TimeoutError):
                if attempt == attempts:
                    raise
            await asyncio.sleep(pause_s)
            pause_s *= 2
        raise PaymentRefused(503, {"error": "unavailable", "message": "no decision"})

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None


class PaymentRefused(Exception):
    """flashsale refused the notification (a signature or format problem) or never decided it."""

    def __init__(self, status: int, answer: dict[str, Any]) -> None:
        self.status = status
        self.answer = answer
        super().__init__(f"{status}: {answer.get('error')}: {answer.get('message')}")
