"""Reading and checking request bodies. Strict: unknown fields and wrong types are refused."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from flashsale.errors import (
    BodyTooLarge,
    InvalidRequest,
    RequestTimeout,
    SaleNotFound,
    UnreadableBody,
    UnsupportedMediaType,
)
from flashsale.http.decoding import content_codings, decode
from flashsale.ids import SALE_ID_RE
from flashsale.models import datetime_to_ms

_EARLIEST_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
_LATEST_MS = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp() * 1000)
_IDEMPOTENCY_KEY_RE = re.compile(r"\A[!-~]{1,255}\Z")  # visible ASCII, as Stripe allows


async def read_json_object(
    request: web.Request, max_bytes: int, timeout_s: float
) -> dict[str, Any]:
    """The body as a JSON object; an empty body counts as ``{}``. A body that does not arrive
    within ``timeout_s`` is refused: a slow client may not hold a connection for ever.

    The body must be UTF-8 JSON (``Content-Type`` absent, ``application/json`` or a ``+json``
    type), may be compressed (see decoding.py) and may not repeat a key: two parsers along the
    way could each take a different one of the two."""
    headers = request.headers
    content_type = headers.get("Content-Type")
    if content_type is not None and content_type != "application/json" and request.body_exists:
        _check_content_type(request)
    codings = None
    if "Content-Encoding" in headers:  # the plain body of nearly every request skips all this
        codings = content_codings(headers.getall("Content-Encoding"))
    if request.content_length is not None and request.content_length > max_bytes:
        raise BodyTooLarge(f"the body may hold at most {max_bytes} bytes")
    try:
        if request.content.is_eof():  # all of it is here already (the usual small body)
            body = await _read_body(request, max_bytes)
        else:
            async with asyncio.timeout(timeout_s):
                body = await _read_body(request, max_bytes)
    except web.RequestPayloadError as exc:  # e.g. a chunked body that breaks off
        raise UnreadableBody(f"the body could not be read: {exc}") from None
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None
    if codings:
        body = decode(body, codings, max_bytes)
    if not body.strip(_JSON_SPACE):
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(_why_not_json(body)) from None
    if not isinstance(value, dict):
        raise InvalidRequest("the body must be a JSON object")
    # Each key of an object is followed by a colon: as many colons as top-level keys means no
    # nested object and no repeated key. Only other bodies (with a colon in a string, a nested
    # object or a repeat) are parsed again to look.
    if body.count(b":") != len(value):
        _refuse_repeated_keys(body)
    return value


_JSON_SPACE = b" \t\r\n"  # RFC 8259's whitespace; bytes.strip() would also drop \v and \f
_UTF8_BOM = b"\xef\xbb\xbf"


def _check_content_type(request: web.Request) -> None:
    """415 for a body that does not say it is UTF-8 JSON: a form, plain text, XML or bytes."""
    media_type = request.content_type  # lower case, parameters split off
    is_json = media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )
    charset = request.charset  # JSON on the wire is UTF-8 (RFC 8259, 8.1)
    if not is_json or (charset is not None and charset.lower() not in ("utf-8", "utf8")):
        raise UnsupportedMediaType(
            "send the body as application/json (UTF-8), or without a Content-Type"
        )


def _why_not_json(body: bytes) -> str:
    if body.startswith(_UTF8_BOM):
        return "the body starts with a byte order mark; send JSON without one (RFC 8259)"
    try:
        body.decode()
    except UnicodeDecodeError:
        return "the body is not valid UTF-8"
    return "the body is not valid JSON"


def _refuse_repeated_keys(body: bytes) -> None:
    try:
        json.loads(body, object_pairs_hook=_object_without_repeats)
    except RecursionError:
        raise InvalidRequest("the body is nested too deeply") from None


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidRequest(f"the body repeats the key {key[:64]!r}")
            seen.add(key)
    return value


async def _read_body(request: web.Request, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(max_bytes + 1 - size):
        size += len(chunk)
        if size > max_bytes:  # a chunked body has no Content-Length to refuse up front
            raise BodyTooLarge(f"the body may hold at most {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def reject_unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}")


def integer(body: dict[str, Any], name: str, *, default: int | None = None, minimum: int = 0,
            maximum: int = 2**53) -> int:  # fmt: skip
    value = body.get(name, default)
    if value is None:
        raise InvalidRequest(f"'{name}' is required")
    # bool is an int in Python, but true is not a quantity
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be an integer")
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"'{name}' must be between {minimum} and {maximum}")
    return value


def boolean(body: dict[str, Any], name: str, *, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be true or false")
    return value


def number(body: dict[str, Any], name: str, *, default: float, minimum: float,
           maximum: float) -> float:  # fmt: skip
    value = body.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a number")
    if not minimum <= value <= maximum:  # NaN fails too
        raise InvalidRequest(f"'{name}' must be between {minimum:g} and {maximum:g}")
    return float(value)


def text(body: dict[str, Any], name: str, *, max_len: int = 200,
         default: str | None = None) -> str:  # fmt: skip
    value = body.get(name, default)
    if value is None:
        raise InvalidRequest(f"'{name}' is required")
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"'{name}' must be a non-empty string")
    if not value.isprintable():  # NUL, newlines, escapes: nothing a shop shows or stores
        raise InvalidRequest(f"'{name}' may not hold control characters")
    if len(value) > max_len:
        raise InvalidRequest(f"'{name}' may hold at most {max_len} characters")
    return value


# the one time format of the API, as error messages state it
TIME_FORMAT = 'an ISO 8601 time with a UTC offset, as a string, e.g. "2026-11-22T10:00:00+08:00"'


def timestamp_ms(body: dict[str, Any], name: str) -> int:
    """An ISO 8601 time with an explicit offset, as epoch milliseconds. Nothing else: an epoch
    number could be seconds or milliseconds, and a time without an offset could be anywhere."""
    value = body.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be {TIME_FORMAT}; epoch numbers are not accepted")
    raw = text(body, name, max_len=64)
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        epoch = raw.strip().replace(".", "", 1).isdigit()  # "1795000000" in quotes
        why = "; epoch numbers are not accepted" if epoch else ""
        raise InvalidRequest(f"'{name}' must be {TIME_FORMAT}{why}") from None
    if moment.tzinfo is None:
        raise InvalidRequest(f"'{name}' must carry a UTC offset, e.g. +00:00 or Z")
    ms = datetime_to_ms(moment)
    if not _EARLIEST_MS <= ms <= _LATEST_MS:
        raise InvalidRequest(f"'{name}' must fall between 2000-01-01 and 9999-01-01 (UTC)")
    return ms


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY_RE.match(key):
        raise InvalidRequest("Idempotency-Key must be 1 to 255 visible ASCII characters")
    if len(request.headers.getall("Idempotency-Key")) > 1:  # which one would a retry keep?
        raise InvalidRequest("send one Idempotency-Key header, not several")
    return key


def path_sale_id(request: web.Request) -> str:
    """The ``{sale_id}`` of the URL; one that cannot exist is simply not found."""
    sale_id = request.match_info["sale_id"]
    if not SALE_ID_RE.match(sale_id):
        raise SaleNotFound()
    return sale_id
