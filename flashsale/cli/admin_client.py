"""The admin HTTP API from the command line: a small blocking client (urllib), for the
``flashsale sales`` commands. The service's URL and admin token come from ``--url`` and
``--token``, or FLASHSALE_SERVICE_URL and FLASHSALE_ADMIN_TOKEN."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_URL = "http://127.0.0.1:8080"


class ClientError(Exception):
    """The call did not get an answer: the service cannot be reached, or answered nonsense."""


class Refused(Exception):
    """The service answered with an error: ``{"error": code, "message": text}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def service_url(given: str | None) -> str:
    return (given or os.environ.get("FLASHSALE_SERVICE_URL") or DEFAULT_URL).rstrip("/")


def admin_token(given: str | None) -> str | None:
    return given or os.environ.get("FLASHSALE_ADMIN_TOKEN") or None


def sale_path(sale_id: str, *rest: str) -> str:
    return "/".join(["/v1/admin/sales", quote(sale_id, safe=""), *rest])


class AdminClient:
    def __init__(self, base_url: str, token: str, *, timeout_s: float = 15.0) -> None:
        self.base_url = base_url
        self._token = token
        self.timeout_s = timeout_s

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: dict[str, str | int] | None = None,
    ) -> dict[str, Any]:
        """The answer's JSON object; raises :class:`Refused` or :class:`ClientError`."""
        url = self.base_url + path + (f"?{urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return _json(response.read(), url)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                answer = _json(raw, url)
            except ClientError:
                raise Refused(exc.code, "http_error", raw[:200].decode(errors="replace")) from None
            raise Refused(
                exc.code, str(answer.get("error", "http_error")), str(answer.get("message", ""))
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach the service at {self.base_url}: {reason}") from None


def _json(raw: bytes, url: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise ClientError(f"{url} did not answer JSON: {raw[:200]!r}") from None
    if not isinstance(value, dict):
        raise ClientError(f"{url} did not answer a JSON object")
    return value
