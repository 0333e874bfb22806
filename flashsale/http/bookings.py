"""Shopper booking endpoints: book a place, and see where you stand."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from flashsale.http.responses import json_response
from flashsale.http.services import SERVICES
from flashsale.http.validation import path_sale_id, read_json_object, reject_unknown
from flashsale.models import iso


async def book(request: web.Request) -> web.Response:
    """201 with a new booking number; 200 with the same number for a repeat."""
    services = request.app[SERVICES]
    user_id = services.shoppers.user_id(request.headers.get("Authorization"))
    sale_id = path_sale_id(request)
    body = await read_json_object(
        request, services.settings.max_body_bytes, services.settings.body_timeout_s
    )
    reject_unknown(body, frozenset())
    booking = await services.bookings.book(sale_id, user_id, request.remote or "")
    payload: dict[str, Any] = {
        "sale_id": sale_id,
        "user_id": user_id,
        "booking_no": booking.booking_no,
        # state, place in the queue and the wait are answered here, as they change
        "status_url": f"/v1/sales/{sale_id}/bookings/me",
    }
    if booking.booked_ms is not None:
        payload["booked_at"] = iso(booking.booked_ms)
    return json_response({"booking": payload}, status=201 if booking.new else 200)


async def my_booking(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    user_id = services.shoppers.user_id(request.headers.get("Authorization"))
    status = await services.bookings.status(path_sale_id(request), user_id)
    return json_response({"booking": status.to_json()})
