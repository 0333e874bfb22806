"""JSON responses, encoded with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

# the error code an error answer carries (its body's "error"), for the metrics middleware
ERROR_CODE = web.ResponseKey("error_code", str)


def json_response(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
