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
        "status": {"enum": ["reserved", "paid", "expired", "cancelled"]},
        "created_at": _TIME,
        "expires_at": _TIME,
        "updated_at": _TIME,
        "campaign": {"type": "string"},
    },
}

SALE = {
    "type": "object",
    "required": ["sale_id", "stock", "available", "status", "starts_at", "ends_at"],
    "properties": {
        "sale_id": {"type": "string"},
        "stock": {"type": "integer"},
        "available": {"type": "integer"},
        "status": {"enum": ["scheduled", "open", "paused", "sold_out", "ended"]},
        "starts_at": _TIME,
        "ends_at": _TIME,
    },
}

RATE_FIELDS = {
    "rate_per_user": {"type": "number", "minimum": 0},
    "burst_per_user": {"type": "integer", "minimum": 1},
    "rate_per_address": {"type": "number", "minimum": 0},
    "burst_per_address": {"type": "integer", "minimum": 1},
}

SALE_CREATE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sku", "name", "price_cents", "stock", "starts_at", "ends_at"],
    "properties": {
        "sale_id": {"type": "string", "pattern": "^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"},
        "sku": {"type": "string", "minLength": 1, "maxLength": 64},
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "price_cents": {"type": "integer", "minimum": 0},
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
        "booking_capacity": {"type": "integer", "minimum": 1},
        "admission": {"enum": ["arrival", "booking_order", "lottery"]},
        "admission_ratio": {"type": "number"},
        "admission_window_s": {"type": "integer", "minimum": 1},
        "lottery_seed": {"type": "string"},
        **RATE_FIELDS,
    },
}

BUY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "quantity": {"type": "integer", "minimum": 1, "maximum": 1000},
        "fcode": {"type": "string", "maxLength": 64},
    },
}

EMPTY = {"type": "object", "additionalProperties": False, "properties": {}}

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
                "post": _op("Pay a reserved order", {"200": order}, body=EMPTY, params=ORDER_PATH),
            },
            "/v1/orders/{order_id}/cancel": {
                "post": _op(
                    "Cancel a reserved order", {"200": order}, body=EMPTY, params=ORDER_PATH
                ),
            },
            "/v1/admin/sales": {
                "post": _op("Create a sale", {"201": sale}, body=SALE_CREATE, security="admin"),
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
            },
            "/v1/admin/sales/{sale_id}/stats": {
                "get": _op(
                    "A sale's numbers in Redis and PostgreSQL",
                    {"200": _answer("the numbers", _wrapped("stats", _OBJECT))},
                    security="admin",
                    params=SALE_PATH,
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
