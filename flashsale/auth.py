"""Who is calling: shoppers by HS256 JWT, operators by the admin token."""

from __future__ import annotations

import hmac
import time

import jwt

from flashsale.errors import Unauthorized

_ALGORITHMS = ["HS256"]  # pinned: "none" and every other algorithm are refused
_MAX_TOKEN_CHARS = 2048
_MAX_USER_ID_CHARS = 128


def issue_token(secret: str, user_id: str, ttl_s: int = 3600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + ttl_s}, secret, algorithm="HS256")


def _bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized("missing Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return token.strip()


class ShopperAuth:
    """Verifies shopper tokens. Decoded tokens are remembered until they expire, so a shopper
    hammering the buy button costs one signature check, not one per click."""

    def __init__(self, secret: str, *, cache_size: int = 100_000) -> None:
        self._secret = secret
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
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=_ALGORITHMS, options={"require": ["sub", "exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        user_id = claims["sub"]
        if not isinstance(user_id, str) or not 0 < len(user_id) <= _MAX_USER_ID_CHARS:
            raise Unauthorized("invalid token: 'sub' must be a non-empty string")
        if len(self._cache) >= self._cache_size:
            self._cache.clear()  # crude but bounded; a re-check costs only a signature
        self._cache[token] = (user_id, float(claims["exp"]))
        return user_id


class AdminAuth:
    def __init__(self, admin_token: str) -> None:
        self._token = admin_token.encode()

    def check(self, authorization: str | None) -> None:
        token = _bearer(authorization)
        if not hmac.compare_digest(token.encode(), self._token):  # constant time
            raise Unauthorized("invalid admin token")
