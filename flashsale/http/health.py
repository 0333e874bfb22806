"""``GET /healthz``: 200 when Redis and PostgreSQL both answer, 503 otherwise; with the
flashsale version (to see a rolling upgrade through) and the answering process's pid, to tell
the workers of ``serve --workers`` apart."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from flashsale import __version__
from flashsale.http.responses import json_response
from flashsale.http.services import SERVICES

_TIMEOUT_S = 2.0


async def healthz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(services.engine.redis.ping(), _TIMEOUT_S)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    try:
        await asyncio.wait_for(services.pool.fetchval("SELECT 1"), _TIMEOUT_S)
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    body = {
        "status": "ok" if healthy else "unavailable",
        **checks,
        "version": __version__,
        "pid": os.getpid(),
    }
    return json_response(body, status=200 if healthy else 503)
