"""The few HTTP calls the driver makes itself: the operator's (create a sale, its stats) and
the public view of the sale."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ApiError(RuntimeError):
    pass


class Api:
    def __init__(self, base_url: str, admin_token: str) -> None:
        self.base = base_url.rstrip("/")
        self.admin_token = admin_token

    def call(self, method: str, path: str, body: Any = None, admin: bool = True) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if admin:
            req.add_header("Authorization", f"Bearer {self.admin_token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise ApiError(f"{method} {path}: HTTP {exc.code}: {detail}") from None

    def create_sale(self, spec: dict[str, Any]) -> dict[str, Any]:
        sale: dict[str, Any] = self.call("POST", "/v1/admin/sales", spec)["sale"]
        return sale

    def stats(self, sale_id: str) -> dict[str, Any]:
        stats: dict[str, Any] = self.call("GET", f"/v1/admin/sales/{sale_id}/stats")["stats"]
        return stats

    def sale(self, sale_id: str) -> dict[str, Any]:
        sale: dict[str, Any] = self.call("GET", f"/v1/sales/{sale_id}", admin=False)["sale"]
        return sale

    def units(self, sale_id: str) -> dict[str, Any]:
        """The stats, with the F-code lane's units (which the stats leave out)."""
        return {**self.stats(sale_id), "fcode_available": self.sale(sale_id)["fcode_available"]}
