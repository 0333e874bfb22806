"""The API's OpenAPI 3.1 description, served at ``GET /openapi.json``.

Written out here rather than derived from the handlers: it is the promise to clients, and the
fuzz test (tests/test_openapi_fuzz.py) holds the service to it: no 5xx and a well-formed error
for anything it generates.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from aiohttp import web

_ID = {"type": "string", "minLength": 1, "maxLength": 200}
_TIME = {"type": "string", "format": "date-time"}
_OBJECT = {"type": "object"}  # answers may grow fields: clients ignore what they do not know

ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}

ORDER = {
    "type": "object",
    "required": ["order_id", "sale_id", "user_id", "quantity", "status", "expires_at"],
    "properties": {
        "order_id": {"type": "string"},
        "sale_id": {"type": "string"},
        "user_id": {"type": "string"},
        "quantity": {"type": "integer", "minimum": 1},
        "amount_cents": {"type": "integer", "minimum": 0},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "status": {"enum": ["reserved", "paid", "expired", "cancelled"]},
        "created_at": _TIME,
        "expires_at": _TIME,
        "updated_at": _TIME,
        "campaign": {"type": "string"},
    },
}

# where a sale stands: the one word answers use for it
_STATUSES = ["scheduled", "open", "paused", "sold_out", "ended"]

SALE = {
    "type": "object",
    "required": ["sale_id", "stock", "available", "status", "starts_at", "ends_at"],
    "properties": {
        "sale_id": {"type": "string"},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "stock": {"type": "integer"},
        "available": {"type": "integer"},
        "status": {"enum": _STATUSES},
        # admin answers only: what the operator set (pause, resume, close)
        "control": {"enum": ["active", "paused", "closed"]},
        "starts_at": _TIME,
        "ends_at": _TIME,
    },
}

# requests a second: 0 (off) or 0.01 to 1,000,000 (see admin.py's _parse_rate for why)
_RATE = {"type": "number", "minimum": 0, "maximum": 1_000_000}
_BURST = {"type": "integer", "minimum": 0, "maximum": 1_000_000}
RATE_FIELDS = {
    "rate_per_user": _RATE,
    "burst_per_user": _BURST,
    "rate_per_address": _RATE,
    "burst_per_address": _BURST,
}

SALE_CREATE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sku", "name", "price_cents", "stock", "starts_at", "ends_at"],
    "properties": {
        "sale_id": {"type": "string", "pattern": "^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"},
        "sku": {"type": "string", "minLength": 1, "maxLength": 64},
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "price_cents": {"type": "integer", "minimum": 0, "maximum": 10**12},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "stock": {"type": "integer", "minimum": 1, "maximum": 100_000_000},
        "per_user_limit": {"type": "integer", "minimum": 1, "maximum": 1000},
        "starts_at": _TIME,
        "ends_at": _TIME,
        "reservation_ttl_s": {"type": "integer", "minimum": 1, "maximum": 86_400},
        "fcode_stock": {"type": "integer", "minimum": 0},
        "fcode_opens_at": _TIME,
        "booking_opens_at": _TIME,
        "booking_closes_at": _TIME,
        "booking_required": {"type": "boolean"},
        "booking_capacity": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
        "admission": {"enum": ["arrival", "booking_order", "lottery"]},
        "admission_ratio": {"type": "number", "minimum": 0.01, "maximum": 1000},
        "admission_window_s": {"type": "integer", "minimum": 1, "maximum": 86_400},
        "lottery_seed": {"type": "string", "minLength": 1, "maxLength": 128},
        # arrival admission only (no booking, or admission "arrival"); 0: no window
        "opening_window_ms": {"type": "integer", "minimum": 0, "maximum": 3_600_000},
        "opening_seed": {"type": "string", "minLength": 1, "maxLength": 128},
        "fcode_release_at": _TIME,
        **RATE_FIELDS,
    },
}

# PATCH /v1/admin/sales/{id}: any field of a create but the id; null puts it back to its default
SALE_EDIT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        name: {"anyOf": [schema, {"type": "null"}]}
        for name, schema in SALE_CREATE["properties"].items()  # type: ignore[attr-defined]
        if name != "sale_id"
    },
}

_STATUS_WORD = "(?:" + "|".join(_STATUSES) + ")"
SALES_QUERY = [
    {
        "name": "status",
        "in": "query",
        "required": False,
        "description": "only sales of these statuses, separated by commas",
        "schema": {"type": "string", "pattern": f"^{_STATUS_WORD}(?:,{_STATUS_WORD})*$"},
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
]

BUY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
        "fcode": {"type": "string", "maxLength": 64},
    },
}

EMPTY = {"type": "object", "additionalProperties": False, "properties": {}}

_VISIBLE_ID = {"type": "string", "pattern": "^[!-~]{1,255}$"}

PAYMENT_EVENT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "data"],
    "properties": {
        "type": {"const": "payment.succeeded"},
        "timestamp": {"type": "string"},
        "data": {
            "type": "object",
            "additionalProperties": False,
            "required": ["order_id", "payment_id", "amount_cents", "currency"],
            "properties": {
                "order_id": _VISIBLE_ID,
                "payment_id": _VISIBLE_ID,
                "amount_cents": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            },
        },
    },
}

PAYMENT = {
    "type": "object",
    "required": ["payment_id", "order_id", "outcome", "reason", "late", "amount_cents",
                 "currency", "received_at", "decided_at"],
    "properties": {
        "payment_id": {"type": "string"},
        "order_id": {"type": "string"},
        "outcome": {"enum": ["paid", "refund_required"]},
        "reason": {
            "enum": [None, "amount_mismatch", "currency_mismatch", "order_not_found",
                     "order_cancelled", "already_paid", "reservation_expired"],
        },
        "late": {"type": "boolean"},
        "amount_cents": {"type": "integer"},
        "currency": {"type": "string"},
        "received_at": _TIME,
        "decided_at": _TIME,
    },
}  # fmt: skip

# Standard Webhooks: the payment service signs each notification (see README, Payments)
WEBHOOK_HEADERS = [
    {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
]

# An order event, as webhooks carry it (with its webhook-id as "id"); data grows fields
EVENT = {
    "type": "object",
    "required": ["id", "type", "timestamp", "data"],
    "properties": {
        "id": {"type": "string"},
        "type": {
            "enum": [
                "order.reserved", "order.paid", "order.cancelled", "order.expired",
                "payment.refund_required",
            ]
        },
        "timestamp": _TIME,
        "data": {
            "type": "object",
            "required": ["order_id", "sequence"],
            "properties": {
                "order_id": {"type": "string"},
                "sale_id": {"type": ["string", "null"]},
                "user_id": {"type": ["string", "null"]},
                "sequence": {"type": ["integer", "null"]},
                "status": {"type": ["string", "null"]},
                "quantity": {"type": ["integer", "null"]},
                "amount_cents": {"type": ["integer", "null"]},
                "currency": {"type": ["string", "null"]},
                "created_at": {"type": ["string", "null"]},
                "expires_at": {"type": ["string", "null"]},
                "payment_id": {"type": "string"},
                "reason": {"type": "string"},
            },
        },
    },
}  # fmt: skip

EVENTS_QUERY = [
    {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "the next_cursor of the previous page; left out: from the first event",
        "schema": {"type": "string", "maxLength": 64},
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    },
]

OPENING = {
    "type": "object",
    "required": ["sale_id", "method", "seed", "seed_sha256", "window_tickets", "tickets",
                 "ordered_list_sha256"],
    "properties": {
        "sale_id": {"type": "string"},
        "method": {"type": "string"},
        "window_ms": {"type": "integer"},
        "queue_opened_at": _TIME,
        "drawn_at": _TIME,
        "seed": {"type": "string"},
        "seed_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "window_tickets": {"type": "integer", "minimum": 0},
        "tickets": {"type": "integer", "minimum": 0},
        "ordered_list_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
}  # fmt: skip

TICKETS_FORMAT = {
    "name": "format",
    "in": "query",
    "required": False,
    "schema": {"enum": ["csv", "jsonl"], "default": "csv"},
}

FCODES = {
    "type": "object",
    "additionalProperties": False,
    "required": ["campaign"],
    "properties": {
        "campaign": {"type": "string", "minLength": 1, "maxLength": 64},
        "count": {"type": "integer", "minimum": 1, "maximum": 10_000},
        "bind_users": {"type": "array", "items": _ID, "minItems": 1, "maxItems": 10_000},
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, **_json(schema)}


def _wrapped(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": [name], "properties": {name: schema}}


def _op(
    summary: str,
    answers: dict[str, dict[str, Any]],
    *,
    body: dict[str, Any] | None = None,
    security: str | None = "shopper",
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {**answers, "default": _answer("an error", ERROR)},
    }
    if body is not None:
        op["requestBody"] = {"required": False, **_json(body)}
    if security is not None:
        op["security"] = [{security: []}]
    if params:
        op["parameters"] = params
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _ID}


SALE_PATH = [_path_param("sale_id")]
ORDER_PATH = [_path_param("order_id")]
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
}


def openapi_spec() -> dict[str, Any]:
    order = _answer("the order", _wrapped("order", ORDER))
    sale = _answer("the sale", _wrapped("sale", SALE))
    with_warnings = {
        "type": "object",
        "required": ["sale", "warnings"],
        "properties": {"sale": SALE, "warnings": {"type": "array", "items": {"type": "string"}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flashsale",
            "version": "1",
            "description": "Flash sales with limited stock, F-codes and a booking queue. "
            'Errors are always {"error": code, "message": text}.',
        },
        "components": {
            "securitySchemes": {
                "shopper": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "admin": {"type": "http", "scheme": "bearer"},
            }
        },
        "paths": {
            "/healthz": {
                "get": _op(
                    "Redis and PostgreSQL both answer",
                    {"200": _answer("healthy", _OBJECT)},
                    security=None,
                ),
            },
            "/v1/sales/{sale_id}": {
                "get": _op(
                    "A sale, as shoppers see it", {"200": sale}, params=SALE_PATH, security=None
                ),
            },
            "/v1/sales/{sale_id}/buy": {
                "post": _op(
                    "Reserve units (public lane, or one unit with an F-code)",
                    {"201": order, "202": _answer("queued: not yet admitted", _OBJECT)},
                    body=BUY,
                    params=[*SALE_PATH, IDEMPOTENCY_KEY],
                ),
            },
            "/v1/sales/{sale_id}/opening": {
                "get": _op(
                    "The opening window's draw: method, seed, its commitment, the number of "
                    "tickets and the SHA-256 of the ordered list (409 until the window closes)",
                    {"200": _answer("the draw", _wrapped("opening", OPENING))},
                    params=SALE_PATH,
                    security=None,
                ),
            },
            "/v1/sales/{sale_id}/bookings": {
                "post": _op(
                    "Book a place in the sale's queue",
                    {"201": _answer("booked", _OBJECT), "200": _answer("booked before", _OBJECT)},
                    body=EMPTY,
                    params=SALE_PATH,
                ),
            },
            "/v1/sales/{sale_id}/bookings/me": {
                "get": _op(
                    "The caller's booking and place in the queue",
                    {"200": _answer("the booking", _OBJECT)},
                    params=SALE_PATH,
                ),
            },
            "/v1/orders/{order_id}": {
                "get": _op("One of the caller's orders", {"200": order}, params=ORDER_PATH),
            },
            "/v1/orders/{order_id}/pay": {
                "post": {
                    **_op(
                        "Retired (410 gone): the payment service notifies payments",
                        {"410": _answer("gone", ERROR)},
                        body=EMPTY,
                        params=ORDER_PATH,
                    ),
                    "deprecated": True,
                },
            },
            "/v1/payments/events": {
                "post": _op(
                    "A payment notification from the payment service (Standard Webhooks)",
                    {"200": _answer("the payment's outcome", _wrapped("payment", PAYMENT))},
                    body=PAYMENT_EVENT,
                    security=None,
                    params=WEBHOOK_HEADERS,
                ),
            },
            "/v1/orders/{order_id}/cancel": {
                "post": _op(
                    "Cancel a reserved order", {"200": order}, body=EMPTY, params=ORDER_PATH
                ),
            },
            "/v1/admin/sales": {
                "post": _op(
                    "Create a sale",
                    {"201": _answer("the sale, and warnings", with_warnings)},
                    body=SALE_CREATE,
                    security="admin",
                ),
                "get": _op(
                    "The sales, the latest start first",
                    {
                        "200": _answer(
                            "the sales; not_armed: sales PostgreSQL has and Redis not",
                            {
                                "type": "object",
                                "required": ["sales", "not_armed"],
                                "properties": {
                                    "sales": {"type": "array", "items": SALE},
                                    "not_armed": {"type": "array", "items": {"type": "string"}},
                                },
                            },
                        )
                    },
                    security="admin",
                    params=SALES_QUERY,
                ),
            },
            "/v1/admin/sales/{sale_id}": {
                "get": _op(
                    "A sale, as its operator sees it",
                    {"200": sale},
                    security="admin",
                    params=SALE_PATH,
                ),
                "patch": _op(
                    "Correct a sale before it opens (and before its F-code lane and booking do)",
                    {"200": _answer("the sale, and warnings", with_warnings)},
                    body=SALE_EDIT,
                    security="admin",
                    params=SALE_PATH,
                ),
                "delete": _op(
                    "Delete a sale that never opened and holds no order, booking or F-code",
                    {
                        "200": _answer(
                            "deleted",
                            {
                                "type": "object",
                                "required": ["deleted"],
                                "properties": {"deleted": {"type": "string"}},
                            },
                        )
                    },
                    security="admin",
                    params=SALE_PATH,
                ),
            },
            **{
                f"/v1/admin/sales/{{sale_id}}/{action}": {
                    "post": _op(
                        f"{action.capitalize()} a sale",
                        {"200": sale},
                        body=EMPTY,
                        security="admin",
                        params=SALE_PATH,
                    ),
                }
                for action in ("pause", "resume", "close")
            },  # pause and close also answer a "note" on the reservations not yet paid
            "/v1/admin/sales/{sale_id}/stats": {
                "get": _op(
                    "A sale's numbers in Redis and PostgreSQL",
                    {"200": _answer("the numbers", _wrapped("stats", _OBJECT))},
                    security="admin",
                    params=SALE_PATH,
                ),
            },
            "/v1/admin/sales/{sale_id}/opening/tickets": {
                "get": _op(
                    "Every ticket of the opening window in rank order (CSV or JSON lines)",
                    {
                        "200": {
                            "description": "rank, ticket, user_digest, drawn; one a line",
                            "content": {
                                "text/csv": {"schema": {"type": "string"}},
                                "application/jsonl": {"schema": {"type": "string"}},
                            },
                        }
                    },
                    security="admin",
                    params=[*SALE_PATH, TICKETS_FORMAT],
                ),
            },
            "/v1/admin/events": {
                "get": _op(
                    "Order events after a cursor, in commit order (the webhooks' events, pulled)",
                    {
                        "200": _answer(
                            "a page of events and the cursor to ask for the next",
                            {
                                "type": "object",
                                "required": ["events", "next_cursor"],
                                "properties": {
                                    "events": {"type": "array", "items": EVENT},
                                    "next_cursor": {"type": "string"},
                                },
                            },
                        )
                    },
                    security="admin",
                    params=EVENTS_QUERY,
                ),
            },
            "/v1/admin/sales/{sale_id}/fcodes": {
                "post": _op(
                    "Issue a campaign of F-codes",
                    {"201": _answer("the codes, shown once", _OBJECT)},
                    body=FCODES,
                    security="admin",
                    params=SALE_PATH,
                ),
            },
        },
    }


@functools.cache
def _spec_bytes() -> bytes:
    return orjson.dumps(openapi_spec())


async def serve_openapi(request: web.Request) -> web.Response:
    return web.Response(body=_spec_bytes(), content_type="application/json")
