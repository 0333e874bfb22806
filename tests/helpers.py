"""A running flashsale service for tests, with shortcuts for the calls tests make most."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner

from flashsale.auth import issue_token
from flashsale.engine.scripts import LuaScript
from flashsale.http.app import create_app
from flashsale.http.runner import AppRunner
from flashsale.http.services import SERVICES, Services
from flashsale.ids import sale_of_order
from flashsale.payments.simulator import signed_notification
from flashsale.settings import Settings
from flashsale.webhooks.signing import parse_secret

# The payment service's signing secret in tests (the settings fixture gives it to the service)
PAYMENT_SECRET = "whsec_Zmxhc2hzYWxlIHRlc3RzOiBwYXltZW50IGtleSAzMmI="

# The tests that each keep both cores busy for many seconds (a launch rehearsal, the SIGKILL
# campaign, the demos, the release's build and fresh venv): one pytest-xdist group, so they run
# one after another on one worker, never beside each other (`--dist loadgroup`, pyproject.toml)
whole_machine = pytest.mark.xdist_group("whole_machine")


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def sale_spec(**fields: Any) -> dict[str, Any]:
    """A sale that is open now, for an hour; ``fields`` override."""
    now = datetime.now(UTC)
    spec: dict[str, Any] = {
        "sku": "mi-1",
        "name": "Mi 1",
        "price_cents": 199_900,
        "stock": 10,
        "starts_at": (now - timedelta(seconds=5)).isoformat(),
        "ends_at": (now + timedelta(hours=1)).isoformat(),
    }
    spec.update(fields)
    return spec


class CountingScript:
    """The real buy script, with a count of the calls that reached Redis."""

    def __init__(self, script: LuaScript) -> None:
        self.script = script
        self.calls = 0

    async def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return await self.script(*args)


class Service:
    def __init__(self, client: TestClient[Any, Any], settings: Settings) -> None:
        self.client = client
        self.settings = settings

    @property
    def services(self) -> Services:
        return self.client.app[SERVICES]  # type: ignore[index]

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.admin_token}"}

    def auth(self, user_id: str, ttl_s: int = 3600) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {issue_token(self.settings.token_secret, user_id, ttl_s)}"
        }

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        async with self.client.request(method, path, json=json, data=data, headers=headers) as resp:
            raw = await resp.read()
            body = await resp.json(content_type=None) if raw else {}
            return Reply(resp.status, body, dict(resp.headers))

    async def create_sale(self, **fields: Any) -> dict[str, Any]:
        reply = await self.call(
            "POST", "/v1/admin/sales", json=sale_spec(**fields), headers=self.admin_headers
        )
        assert reply.status == 201, reply.body
        sale: dict[str, Any] = reply.body["sale"]
        return sale

    async def buy(
        self, sale_id: str, user_id: str, body: Any = None, key: str | None = None
    ) -> Reply:
        headers = self.auth(user_id)
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.call(
            "POST", f"/v1/sales/{sale_id}/buy", json={} if body is None else body, headers=headers
        )

    async def order_action(self, order_id: str, user_id: str, action: str) -> Reply:
        return await self.call(
            "POST", f"/v1/orders/{order_id}/{action}", headers=self.auth(user_id)
        )

    async def due(self, order_id: str) -> tuple[int, str]:
        """What an order costs (the sale's price x its quantity) and in which currency, as
        Redis holds them; (0, the default currency) for an order that is not there."""
        engine = self.services.engine
        sale_id = sale_of_order(order_id)
        if sale_id is None or not await engine.redis.exists(engine.keys.sale(sale_id).sale):
            return 0, engine.default_currency
        price, currency = await engine.sale_terms(sale_id)
        qty = await engine.redis.hget(engine.keys.sale(sale_id).order(order_id), "qty")
        return price * int(qty or 0), currency

    async def pay(
        self,
        order_id: str,
        amount_cents: int | None = None,
        currency: str | None = None,
        payment_id: str | None = None,
        *,
        webhook_id: str | None = None,
        timestamp: int | None = None,
        secret: str = PAYMENT_SECRET,
    ) -> Reply:
        """The payment service's notification that ``order_id`` was paid, signed; by default
        the amount and currency due, a new payment id and a new webhook-id."""
        due, due_currency = await self.due(order_id)
        body, headers = signed_notification(
            parse_secret(secret), order_id,
            due if amount_cents is None else amount_cents,
            due_currency if currency is None else currency,
            payment_id=payment_id, webhook_id=webhook_id, timestamp=timestamp,
        )  # fmt: skip
        return await self.call("POST", "/v1/payments/events", data=body, headers=headers)

    async def stats(self, sale_id: str) -> dict[str, Any]:
        reply = await self.call(
            "GET", f"/v1/admin/sales/{sale_id}/stats", headers=self.admin_headers
        )
        assert reply.status == 200, reply.body
        stats: dict[str, Any] = reply.body["stats"]
        return stats

    async def wait_for_postgres(self, sale_id: str, timeout_s: float = 15.0) -> dict[str, Any]:
        """Stats once PostgreSQL agrees with Redis on every order's status."""
        deadline = time.monotonic() + timeout_s
        while True:
            s = await self.stats(sale_id)
            pg = s["orders_in_postgres"]
            rows = await self.services.pool.fetch(
                "SELECT status, sum(quantity) AS units FROM orders WHERE sale_id = $1 "
                "GROUP BY status",
                sale_id,
            )
            units = {r["status"]: r["units"] for r in rows}
            statuses = ("reserved", "paid", "expired", "cancelled")
            # "expired" counts every expiry, also of the orders a late payment paid after
            redis_units = s | {"expired": s["expired"] - s["paid_late"]}
            if all(units.get(status, 0) == redis_units[status] for status in statuses):
                return await self.stats(sale_id)  # read again: its PostgreSQL counts are current
            if time.monotonic() > deadline:
                raise AssertionError(f"PostgreSQL did not catch up: {pg} vs {s}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.client.close()


def flashsale_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a ``flashsale`` subprocess configured like ``settings``: this
    machine's variables without any FLASHSALE_* of its own, then the test's, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env.update(
        FLASHSALE_REDIS_URL=settings.redis_url,
        FLASHSALE_DATABASE_URL=settings.database_url,
        FLASHSALE_KEY_PREFIX=settings.key_prefix,
        FLASHSALE_TOKEN_SECRET=settings.token_secret,
        FLASHSALE_ADMIN_TOKEN=settings.admin_token,
        FLASHSALE_PAYMENT_SECRET=",".join(settings.payment_secrets),
        FLASHSALE_DEFAULT_CURRENCY=settings.default_currency,
    )
    env.update(extra)
    return env


async def run_flashsale(settings: Settings, *args: str) -> tuple[int, str, str]:
    """Run ``flashsale ARGS`` as a subprocess configured like ``settings``:
    (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flashsale", *args,
        env=flashsale_env(settings),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class FlashsaleTestServer(TestServer):
    """aiohttp's TestServer, serving through flashsale's runner as ``flashsale serve`` does."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return AppRunner(self.app, **kwargs)


@contextlib.asynccontextmanager
async def services_started(settings: Settings) -> AsyncIterator[Callable[..., Awaitable[Service]]]:
    """A factory of services (real HTTP on loopback; keyword arguments override ``settings``),
    every one of them closed at the end."""
    started: list[Service] = []

    async def make(**overrides: Any) -> Service:
        service = await start_service(replace(settings, **overrides))
        started.append(service)
        return service

    yield make
    for service in reversed(started):
        await service.close()


async def start_service(settings: Settings) -> Service:
    client: TestClient[Any, Any] = TestClient(FlashsaleTestServer(create_app(settings)))
    await client.start_server()
    return Service(client, settings)


async def gather_limited(limit: int, *coros: Any) -> list[Any]:
    """Run coroutines concurrently, at most ``limit`` at once, results in order. If one fails,
    the others are cancelled (a TaskGroup), so a failing test never leaves a crowd behind."""
    semaphore = asyncio.Semaphore(limit)

    async def run(coro: Any) -> Any:
        async with semaphore:
            return await coro

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(run(c)) for c in coros]
    return [t.result() for t in tasks]


async def assert_reconciled(service: Service, sale_id: str) -> None:
    """``flashsale reconcile`` finds Redis and PostgreSQL in agreement (the writer drained)."""
    from flashsale.cli.reconcile import reconcile, render

    await service.wait_for_postgres(sale_id)
    report, _ = await reconcile(service.services.pool, service.services.engine, sale_id)
    assert report.clean, render(report, [])
