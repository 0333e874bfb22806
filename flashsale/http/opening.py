"""The opening window over HTTP: a shopper's ticket (the buy's 202), the published draw
(``GET /v1/sales/{id}/opening``) and the ticket list for the operator
(``GET /v1/admin/sales/{id}/opening/tickets``)."""

from __future__ import annotations

import asyncio
import math

from aiohttp import web

from flashsale import errors
from flashsale.booking.status import estimate_wait_s
from flashsale.http.admin import admin_services
from flashsale.http.responses import json_response
from flashsale.http.services import SERVICES
from flashsale.http.validation import path_sale_id
from flashsale.models import iso
from flashsale.opening import export, roll
from flashsale.opening.tickets import Ticketed

_CONTENT_TYPES = {"csv": "text/csv", "jsonl": "application/jsonl"}
_RETRY_AFTER_MAX_S = 30


def ticketed_response(t: Ticketed) -> web.Response:
    """202: the shopper holds ticket ``t.ticket`` of the opening window; nothing was reserved.
    Before the draw nobody's place is known (``position`` null); after it, their place and an
    honest wait. Asking again sooner than Retry-After changes nothing: the place is the
    ticket's."""
    if t.ahead is None:
        wait_s, lower_bound = max(0, math.ceil((t.draw_ms - t.now_ms) / 1000)), True
    else:
        wait_s, lower_bound = estimate_wait_s(t.ahead, t.admission_rate, t.next_free_ms, t.now_ms)
    response = json_response(
        {
            "status": "queued",
            "queue": "opening",
            "ticket": t.ticket,
            "position": t.ahead,
            "estimated_wait_s": wait_s,
            "wait_is_lower_bound": lower_bound,
            "opening_draw_at": iso(t.draw_ms),
        },
        status=202,
    )
    response.headers["Retry-After"] = str(max(1, min(wait_s, _RETRY_AFTER_MAX_S)))
    return response


async def get_opening(request: web.Request) -> web.Response:
    """The draw, for anyone to check: 404 for a sale without a window, 409 (with Retry-After)
    until the window closes."""
    services = request.app[SERVICES]
    keys = services.engine.keys.sale(path_sale_id(request))
    return json_response({"opening": await roll.published(services.engine.redis, keys)})


async def export_tickets(request: web.Request) -> web.StreamResponse:
    """Every ticket, in rank order, as CSV (``?format=csv``, the default) or JSON lines
    (``?format=jsonl``); see flashsale/opening/export.py."""
    services = admin_services(request)
    fmt = request.query.get("format", "csv")
    if fmt not in export.FORMATS:
        raise errors.InvalidRequest("'format' must be csv or jsonl")
    sale_id = path_sale_id(request)
    state, ordered = await roll.ticket_rows(
        services.engine.redis, services.engine.keys.sale(sale_id)
    )
    assert state.window_tickets is not None
    # the draw of a million tickets takes about a second: not on the event loop
    rows = await asyncio.to_thread(list, export.rows_of(ordered, state.window_tickets))
    response = web.StreamResponse(
        headers={
            "Content-Type": f"{_CONTENT_TYPES[fmt]}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{sale_id}-tickets.{fmt}"',
        }
    )
    await response.prepare(request)
    for chunk in export.render(rows, fmt):
        await response.write(chunk)
    await response.write_eof()
    return response
