"""Shortcuts for booking-queue tests: sales that open a moment from now, and queue probes."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.helpers import Reply, Service

OPENS_IN_S = 1.5  # long enough to book a crowd over HTTP before the sale opens


def at(seconds: float) -> str:
    """An ISO time ``seconds`` from now."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def queued_sale(
    service: Service, *, opens_in_s: float = OPENS_IN_S, **fields: Any
) -> tuple[str, float]:
    """A booking-queue sale (booking_order by default) whose booking is open now and which
    opens ``opens_in_s`` from now; (sale id, monotonic time of the opening)."""
    spec: dict[str, Any] = {
        "booking_opens_at": at(-60),
        "booking_closes_at": at(opens_in_s),
        "starts_at": at(opens_in_s),
        "admission": "booking_order",
        "booking_required": True,
    }
    spec.update(fields)
    if spec["admission"] != "arrival":
        spec.setdefault("admission_window_s", 1)
    opens_at = time.monotonic() + opens_in_s
    sale = await service.create_sale(**spec)
    return sale["sale_id"], opens_at


async def book(service: Service, sale_id: str, user: str) -> Reply:
    return await service.call("POST", f"/v1/sales/{sale_id}/bookings", headers=service.auth(user))


async def me(service: Service, sale_id: str, user: str) -> dict[str, Any]:
    reply = await service.call(
        "GET", f"/v1/sales/{sale_id}/bookings/me", headers=service.auth(user)
    )
    assert reply.status == 200, reply.body
    booking: dict[str, Any] = reply.body["booking"]
    return booking


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()) + 0.05)


async def public_sale(service: Service, sale_id: str) -> dict[str, Any]:
    reply = await service.call("GET", f"/v1/sales/{sale_id}")
    assert reply.status == 200, reply.body
    sale: dict[str, Any] = reply.body["sale"]
    return sale


async def wait_for(predicate: Any, timeout_s: float = 10.0, interval_s: float = 0.05) -> Any:
    """Poll an async predicate until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval_s)
