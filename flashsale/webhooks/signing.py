"""Standard Webhooks signatures (https://www.standardwebhooks.com), both ways.

Payment notifications come in signed by the payment service, and order events go out signed
by flashsale, the same way: ``webhook-signature: v1,<base64 HMAC-SHA256(key,
"{webhook-id}.{webhook-timestamp}.{body}")>``, several space-separated signatures allowed (key
rotation), the key given as ``whsec_<base64>``, and a timestamp more than five minutes off
refused (a replay window; within it, receivers remember the ids they processed).

Written out rather than taken from the ``standardwebhooks`` package, whose verifier is lenient
where a service facing the internet must not be (it accepts non-canonical base64 and numbers
such as ``1e9`` as timestamps, and raises unexpected errors on a malformed signature list);
the tests hold this module to that package's signatures and to the specification's example.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

SECRET_PREFIX = "whsec_"
TOLERANCE_S = 5 * 60
_ID = re.compile(r"[!-~]{1,255}")  # visible ASCII, as the specification's ids are
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_MAX_SIGNATURES = 10


class SignatureError(ValueError):
    """The notification is not signed by a key we hold, or not within the tolerance."""


class SecretError(ValueError):
    """A ``whsec_`` secret that is not one."""


def parse_secret(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret (the prefix may be left out); at least 16 bytes."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except binascii.Error:
        raise SecretError("a webhook secret is 'whsec_' and base64") from None
    if len(key) < 16:
        raise SecretError("a webhook secret must hold at least 16 bytes (24 base64 characters)")
    return key


def new_secret() -> str:
    """A fresh ``whsec_`` secret of 32 random bytes."""
    import secrets

    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


@dataclass(frozen=True, slots=True)
class Verified:
    msg_id: str
    timestamp: int


def verify(keys: list[bytes], headers: Mapping[str, str], body: bytes, now_s: float) -> Verified:
    """Check a message's three headers against ``keys`` (any of them may have signed it: the
    old and the new key during a rotation). Raises :class:`SignatureError` saying what is
    wrong; never says which key or signature came close."""
    get = headers.get  # aiohttp's headers are a case-insensitive Mapping
    msg_id, stamp, signatures = (
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    )
    if not (msg_id and stamp and signatures):
        raise SignatureError(
            "the webhook-id, webhook-timestamp and webhook-signature headers are required"
        )
    if not _ID.fullmatch(msg_id):
        raise SignatureError("webhook-id must be 1 to 255 visible ASCII characters")
    if not _TIMESTAMP.fullmatch(stamp):
        raise SignatureError("webhook-timestamp must be Unix seconds")
    timestamp = int(stamp)
    if abs(now_s - timestamp) > TOLERANCE_S:
        raise SignatureError(
            f"webhook-timestamp is more than {TOLERANCE_S // 60} minutes away from now"
        )
    offered = signatures.split()
    if len(offered) > _MAX_SIGNATURES:
        raise SignatureError(f"at most {_MAX_SIGNATURES} signatures")
    expected = [sign(key, msg_id, timestamp, body).encode() for key in keys]
    for candidate in offered:
        if not candidate.isascii():
            continue
        version, _, _ = candidate.partition(",")
        if version != "v1":
            continue  # other schemes (v1a: asymmetric) are not ours
        for want in expected:
            if hmac.compare_digest(candidate.encode(), want):
                return Verified(msg_id=msg_id, timestamp=timestamp)
    raise SignatureError("no valid signature")


def headers_for(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of an outgoing message."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, msg_id, timestamp, body),
    }
