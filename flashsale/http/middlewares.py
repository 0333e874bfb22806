"""The one place where errors become HTTP answers: ``{"error": code, "message": text}``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flashsale.errors import FlashsaleError, InvalidRequest
from flashsale.http.decoding import ACCEPTED_ENCODINGS
from flashsale.http.responses import ERROR_CODE, json_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's own refusals (no route, wrong method, oversized body) in our words
_HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


# a GET (or HEAD) has no body in this API: one sent anyway is refused, not silently dropped
_BODILESS_METHODS = frozenset({"GET", "HEAD"})


def error_response(status: int, code: str, message: str) -> web.Response:
    response = json_response({"error": code, "message": message}, status=status)
    response[ERROR_CODE] = code
    return response


def answer_error(exc: FlashsaleError) -> web.Response:
    """The answer to ``exc``, with the headers its status calls for."""
    response = error_response(exc.status, exc.code, exc.message)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    elif exc.status == 415:  # which codings would have been read (RFC 9110, 15.5.16)
        response.headers["Accept-Encoding"] = ACCEPTED_ENCODINGS
    if exc.retry_after_s is not None:
        response.headers["Retry-After"] = str(exc.retry_after_s)
    if exc.close_connection:
        response.force_close()
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.method in _BODILESS_METHODS and request.body_exists:
            raise InvalidRequest(f"a {request.method} request takes no body")
        return await handler(request)
    except FlashsaleError as exc:
        return answer_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(exc.status, code, exc.reason)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        log.warning("%s %s: store unavailable: %s", request.method, request.path, exc)
        return error_response(503, "unavailable", "a backing store is unavailable; try again")
    except (
        asyncpg.PostgresConnectionError,  # connection lost mid-query
        asyncpg.OperatorInterventionError,  # shutting down, starting up
        asyncpg.InsufficientResourcesError,  # too many connections
        asyncpg.InterfaceError,
    ) as exc:
        log.warning("%s %s: database unavailable: %s", request.method, request.path, exc)
        return error_response(503, "unavailable", "the database is unavailable; try again")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal_error", "internal error")
