"""Who is calling: shoppers by HS256 JWT, operators by the admin token."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

import jwt
import orjson

from flashsale.errors import Unauthorized

# room for a 128-character user id of 4-byte characters, which JSON escapes 12 characters each
_MAX_TOKEN_CHARS = 4096
MAX_USER_ID_CHARS = 128  # a shopper's id: the token's "sub", and ids in lists
USER_ID_RULE = (
    f"a user id is 1 to {MAX_USER_ID_CHARS} printable characters, without spaces at either end"
)


def is_user_id(value: object) -> bool:
    """The one rule for a shopper's id, wherever it comes from: a token's ``sub``, a booking
    list, an F-code binding. Printable rules out NUL, control characters, line breaks and lone
    surrogates, which PostgreSQL's text, a CSV export or a log line cannot carry; spaces at
    either end would make " alice" a shopper other than the "alice" of an imported list."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_USER_ID_CHARS
        and value.isprintable()
        and value == value.strip()
    )


def issue_token(secret: str, user_id: str, ttl_s: int = 3600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + ttl_s}, secret, algorithm="HS256")


def issue_tokens(secret: str, user_ids: Iterable[str], ttl_s: int = 3600) -> Iterator[str]:
    """The tokens of many shoppers, as :func:`issue_token` makes them (the same claims, the
    same header), about ten times faster: the header is encoded and the key prepared once."""
    now = int(time.time())
    header = _b64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    for user_id in user_ids:
        claims = orjson.dumps({"sub": user_id, "iat": now, "exp": now + ttl_s})
        signing_input = f"{header}.{_b64url_encode(claims)}"
        signer = mac.copy()
        signer.update(signing_input.encode())
        yield f"{signing_input}.{_b64url_encode(signer.digest())}"


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# RFC 6750's b64token, loosened to any visible ASCII: a header that aiohttp decoded from
# non-ASCII bytes (or anything else) can never match a token, so it is refused here, before
# anything encodes or compares it
_BEARER_TOKEN = re.compile(r"[!-~]+")


def _bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized("missing Authorization header")
    scheme, _, token = header.partition(" ")
    token = token.strip(" \t")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    if not _BEARER_TOKEN.fullmatch(token):
        raise Unauthorized("invalid token: a bearer token is visible ASCII characters")
    return token


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class HS256Verifier:
    """Checks a compact HS256 JWT and returns its claims; anything else raises Unauthorized.

    Written out rather than calling PyJWT's decode, which costs about 57 µs a token here (a
    third of a launch request, when every request is a new shopper): this is the same check
    (signature first, then algorithm, ``exp``, ``nbf``, ``iat``) in about 5 µs. PyJWT still
    issues tokens, and the tests hold this verifier to PyJWT's tokens and to forged ones.
    """

    def __init__(self, secret: str) -> None:
        self._mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)

    def claims(self, token: str, now: float) -> dict[str, Any]:
        parts = token.split(".")
        # strictly base64url: the decoder would skip stray characters, letting one token be
        # written many ways (each a new cache entry), and a non-ASCII byte must be a 401
        if len(parts) != 3 or not all(_B64URL.fullmatch(p) for p in parts):
            raise Unauthorized("invalid token: not a JWT")
        header_b64, payload_b64, signature_b64 = parts
        mac = self._mac.copy()
        mac.update(f"{header_b64}.{payload_b64}".encode())
        try:
            signature = _b64url(signature_b64)
            valid = hmac.compare_digest(mac.digest(), signature)
            header = orjson.loads(_b64url(header_b64)) if valid else None
            payload = orjson.loads(_b64url(payload_b64)) if valid else None
        except (ValueError, binascii.Error, UnicodeEncodeError):  # orjson's error is a ValueError
            raise Unauthorized("invalid token: not a JWT") from None
        if not valid:
            raise Unauthorized("invalid token: signature verification failed")
        if not isinstance(header, dict) or header.get("alg") != "HS256" or "crit" in header:
            raise Unauthorized("invalid token: the algorithm must be HS256")
        if not isinstance(payload, dict):
            raise Unauthorized("invalid token: the payload must be a JSON object")
        exp = payload.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise Unauthorized("invalid token: 'exp' must be a number")
        if now >= exp:
            raise Unauthorized("token expired")
        for name in ("nbf", "iat"):
            if name in payload and not _number(payload[name]):
                raise Unauthorized(f"invalid token: '{name}' must be a number")
        if "nbf" in payload and now < payload["nbf"]:
            raise Unauthorized("invalid token: the token is not yet valid (nbf)")
        return payload


class ShopperAuth:
    """Verifies shopper tokens. Decoded tokens are remembered until they expire, so a shopper
    hammering the buy button costs one signature check, not one per click."""

    def __init__(self, secret: str, *, cache_size: int = 100_000) -> None:
        self._verifier = HS256Verifier(secret)
        self._cache: dict[str, tuple[str, float]] = {}
        self._cache_size = cache_size

    def user_id(self, authorization: str | None) -> str:
        token = _bearer(authorization)
        cached = self._cache.get(token)
        if cached is not None:
            user_id, exp = cached
            if time.time() < exp:
                return user_id
            del self._cache[token]
        if len(token) > _MAX_TOKEN_CHARS:
            raise Unauthorized("token too large")
        claims = self._verifier.claims(token, time.time())
        sub = claims.get("sub")
        if not is_user_id(sub):
            # checked before any state changes: a user id that PostgreSQL cannot store would
            # reserve a unit in Redis and then stop the order writer
            raise Unauthorized(f"invalid token: 'sub' must be a user id ({USER_ID_RULE})")
        assert isinstance(sub, str)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()  # crude but bounded; a re-check costs only a signature
        self._cache[token] = (sub, float(claims["exp"]))
        return sub


class AdminAuth:
    def __init__(self, admin_token: str) -> None:
        self._token = admin_token.encode()

    def check(self, authorization: str | None) -> None:
        token = _bearer(authorization)
        if not hmac.compare_digest(token.encode(), self._token):  # constant time
            raise Unauthorized("invalid admin token")
