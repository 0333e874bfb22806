"""A payment notification: who sent it (its Standard Webhooks signature) and what it says.

The payment service posts ``{"type": "payment.succeeded", "data": {"order_id", "payment_id",
"amount_cents", "currency"}}`` (and may add the Standard Webhooks envelope's ``"timestamp"``),
signed as flashsale/webhooks/signing.py checks. The body is read strictly: a field we do not
know is refused rather than ignored, since it may be one the sender means to matter (a
partial capture, a test mode), and a refusal (400) changes nothing and is loud, where an
ignored field could mark an order paid that should not be.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flashsale import errors
from flashsale.webhooks import signing

EVENT_TYPE = "payment.succeeded"
# an exact integer in every store along the way (Lua counts in doubles)
MAX_AMOUNT_CENTS = 2**53 - 1

_ENVELOPE = frozenset({"type", "timestamp", "data"})
_DATA = frozenset({"order_id", "payment_id", "amount_cents", "currency"})
_VISIBLE_ASCII = re.compile(r"[!-~]{1,255}")
_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True, slots=True)
class Notification:
    """A verified ``payment.succeeded`` notification."""

    webhook_id: str  # the notification's id: a redelivery carries the same
    order_id: str
    payment_id: str  # the payment service's id of the payment
    amount_cents: int
    currency: str  # ISO 4217


def receive(
    keys: list[bytes], headers: Mapping[str, str], body: bytes, now_s: float
) -> Notification:
    """The notification in ``body``: signed with one of ``keys`` within the tolerance
    (otherwise :class:`errors.SignatureInvalid`, 401), then in the documented form (otherwise
    :class:`errors.InvalidRequest`, 400)."""
    try:
        verified = signing.verify(keys, headers, body, now_s)
    except signing.SignatureError as exc:
        raise errors.SignatureInvalid(str(exc)) from None
    return parse(verified.msg_id, body)


def parse(webhook_id: str, body: bytes) -> Notification:
    """The notification's body, checked field by field."""
    document = _json_object(body)
    _only(document, _ENVELOPE, "the notification")
    if document.get("type") != EVENT_TYPE:
        raise errors.InvalidRequest(f"'type' must be {EVENT_TYPE!r}")
    if "timestamp" in document and not isinstance(document["timestamp"], str):
        raise errors.InvalidRequest("'timestamp' must be a string")
    data = document.get("data")
    if not isinstance(data, dict):
        raise errors.InvalidRequest("'data' must be an object")
    _only(data, _DATA, "'data'")
    missing = sorted(_DATA - data.keys())
    if missing:
        raise errors.InvalidRequest(f"'data' lacks: {', '.join(missing)}")
    order_id, payment_id = data["order_id"], data["payment_id"]
    amount, currency = data["amount_cents"], data["currency"]
    for name, value in (("order_id", order_id), ("payment_id", payment_id)):
        if not isinstance(value, str) or not _VISIBLE_ASCII.fullmatch(value):
            raise errors.InvalidRequest(f"'data.{name}' must be 1 to 255 visible ASCII characters")
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise errors.InvalidRequest("'data.amount_cents' must be an integer")
    if not 0 <= amount <= MAX_AMOUNT_CENTS:
        raise errors.InvalidRequest(f"'data.amount_cents' must be from 0 to {MAX_AMOUNT_CENTS}")
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise errors.InvalidRequest(
            "'data.currency' must be an ISO 4217 code: three upper-case letters, e.g. USD"
        )
    return Notification(
        webhook_id=webhook_id, order_id=order_id, payment_id=payment_id, amount_cents=amount,
        currency=currency,
    )  # fmt: skip


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidRequest("the body is not valid UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_repeats, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError):
        raise errors.InvalidRequest("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise errors.InvalidRequest("the body must be a JSON object")
    return value


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):  # two readers of the body could each take another one
        raise errors.InvalidRequest("the body repeats a key")
    return value


def _no_constant(name: str) -> Any:
    raise errors.InvalidRequest(f"the body is not valid JSON ({name} is not a JSON number)")


def _only(fields: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(fields.keys() - allowed)
    if unknown:
        raise errors.InvalidRequest(f"{where} has unknown field(s): {', '.join(unknown)[:200]}")
