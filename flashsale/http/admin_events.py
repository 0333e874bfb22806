"""``GET /v1/admin/events``: the shop pulls the order events instead of (or as well as) taking
them by webhook. Same events, same ids, in commit-safe cursor order (outbox/cursor.py)."""

from __future__ import annotations

import re

from aiohttp import web

from flashsale import errors
from flashsale.http.admin import admin_services
from flashsale.http.responses import json_response
from flashsale.outbox.cursor import Cursor, CursorError, read_after

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_PARAMETERS = frozenset({"after", "limit"})
_DIGITS = re.compile(r"[0-9]{1,7}")


def _parameter(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise errors.InvalidRequest(f"'{name}' given more than once")
    return values[0] if values else None


def _query(request: web.Request) -> tuple[Cursor, int]:
    unknown = sorted(set(request.query) - _PARAMETERS)
    if unknown:
        raise errors.InvalidRequest(f"unknown query parameter: {unknown[0]!r}")
    after, limit_text = _parameter(request, "after"), _parameter(request, "limit")
    try:
        cursor = Cursor() if after is None else Cursor.decode(after)
    except CursorError:
        raise errors.InvalidRequest(
            "'after' must be a next_cursor this endpoint gave, or left out to start from the "
            "first event"
        ) from None
    limit = DEFAULT_LIMIT
    if limit_text is not None:
        if not _DIGITS.fullmatch(limit_text) or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise errors.InvalidRequest(f"'limit' must be an integer from 1 to {MAX_LIMIT}")
        limit = int(limit_text)
    return cursor, limit


async def list_events(request: web.Request) -> web.Response:
    services = admin_services(request)
    after, limit = _query(request)
    events = await read_after(services.pool, after, limit)
    next_cursor = events[-1].cursor if events else after
    return json_response(
        {"events": [e.to_json() for e in events], "next_cursor": next_cursor.encode()}
    )
