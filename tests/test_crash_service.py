"""The service SIGKILLed again and again in the middle of a sale (Jepsen-style).

``flashsale serve --workers 2`` runs two HTTP workers and an order writer; a seeded killer
SIGKILLs one of them at random moments while a crowd buys, pays and cancels, and the
supervisor starts each one again. A buy whose answer was lost is retried with its
Idempotency-Key. Afterwards: every order answered 201 is in PostgreSQL exactly once and for its
shopper, every payment answered 200 is paid there, confirmed buys <= units sold <= attempted
buys, nobody holds more than the limit, the units add up, and ``flashsale reconcile`` is clean.

FLASHSALE_FAULT_KILLS (default 50) and FLASHSALE_FAULT_SEED (default 1) make longer or other
runs; a failure prints its seed, so it can be replayed.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import psutil
import pytest

from flashsale.auth import issue_token
from flashsale.payments.simulator import new_id, signed_notification
from flashsale.settings import Settings
from flashsale.webhooks.signing import parse_secret
from tests.helpers import PAYMENT_SECRET, flashsale_env, run_flashsale, sale_spec, whole_machine
from tests.servers import free_port

KILLS = int(os.environ.get("FLASHSALE_FAULT_KILLS", "50"))
SEED = int(os.environ.get("FLASHSALE_FAULT_SEED", "1"))
SHOPPERS_AT_ONCE = 30
READY_S = 1.2  # a spawned worker answers after about a second
TIMEOUT = aiohttp.ClientTimeout(total=5)


@dataclass
class Ledger:
    """What the crowd was told."""

    attempted: set[str] = field(default_factory=set)  # users who sent at least one buy
    confirmed: dict[str, str] = field(default_factory=dict)  # order id -> user (a 201 seen)
    paid: set[str] = field(default_factory=set)  # order ids answered 200 paid
    cancelled: set[str] = field(default_factory=set)  # order ids answered 200 cancelled
    cancel_sent: set[str] = field(default_factory=set)  # order ids a cancel was sent for
    answers: Counter[str] = field(default_factory=Counter)


def _children(supervisor: int) -> list[psutil.Process]:
    """The supervisor's HTTP workers and writer (not multiprocessing's resource tracker)."""
    try:
        kids = psutil.Process(supervisor).children()
    except psutil.NoSuchProcess:
        return []
    alive = []
    for kid in kids:
        try:
            if "resource_tracker" not in " ".join(kid.cmdline()):
                alive.append(kid)
        except psutil.Error:
            pass
    return alive


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any]] | None:
    """(status, body), or None when the answer was lost (connection refused or cut)."""
    try:
        async with http.request(method, url, timeout=TIMEOUT, **kwargs) as resp:
            body = await resp.json(content_type=None)
            return resp.status, body if isinstance(body, dict) else {}
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None


async def _shopper(
    http: aiohttp.ClientSession, base: str, sale_id: str, user: str, secret: str,
    rng: random.Random, ledger: Ledger,
) -> None:  # fmt: skip
    """One shopper: buy (retrying a lost answer with the same key), then pay (the payment
    service's notification, sent again under its webhook-id when the answer was lost) or
    cancel."""
    headers = {"Authorization": f"Bearer {issue_token(secret, user)}", "Idempotency-Key": user}
    ledger.attempted.add(user)
    for _ in range(20):
        got = await _call(http, "POST", f"{base}/v1/sales/{sale_id}/buy", json={}, headers=headers)
        if got is None or got[0] >= 500:
            ledger.answers["lost"] += 1
            await asyncio.sleep(0.1)
            continue
        status, body = got
        ledger.answers[f"buy {status}"] += 1
        if status != 201:
            return
        order = body["order"]
        order_id = order["order_id"]
        assert order["user_id"] == user
        ledger.confirmed[order_id] = user
        break
    else:
        return
    action = rng.choice(["pay", "pay", "cancel", "none"])
    if action == "none":
        return
    if action == "cancel":
        ledger.cancel_sent.add(order_id)
    payment_id, webhook_id = new_id("pay"), new_id("msg")
    for _ in range(20):
        if action == "pay":
            data, signed = signed_notification(
                parse_secret(PAYMENT_SECRET), order_id, order["amount_cents"], order["currency"],
                payment_id=payment_id, webhook_id=webhook_id,
            )  # fmt: skip
            got = await _call(http, "POST", f"{base}/v1/payments/events", data=data, headers=signed)
        else:
            got = await _call(http, "POST", f"{base}/v1/orders/{order_id}/cancel", headers=headers)
        if got is None or got[0] >= 500:
            await asyncio.sleep(0.1)
            continue
        if action == "cancel" and got[0] == 200:
            ledger.cancelled.add(order_id)
        if action == "pay" and got[0] == 200 and got[1]["payment"]["outcome"] == "paid":
            ledger.paid.add(order_id)
        return


async def _crowd(
    base: str, sale_id: str, secret: str, rng: random.Random, ledger: Ledger, stop: asyncio.Event
) -> None:
    async with aiohttp.ClientSession() as http:
        n = 0

        async def one_after_another(lane: int) -> None:
            nonlocal n
            while not stop.is_set():
                n += 1
                await _shopper(http, base, sale_id, f"k{SEED}-{lane}-{n}", secret, rng, ledger)

        await asyncio.gather(*(one_after_another(i) for i in range(SHOPPERS_AT_ONCE)))


async def _killer(supervisor: int, rng: random.Random) -> list[str]:
    """SIGKILL a random child (HTTP worker or writer) KILLS times, at random moments, each
    once it has been up for a moment (a process killed while starting proves little)."""
    killed: list[str] = []
    while len(killed) < KILLS:
        await asyncio.sleep(rng.uniform(0.05, 0.3))
        now = time.time()
        victims = [p for p in _children(supervisor) if now - p.create_time() > READY_S]
        if not victims:
            continue
        victim = rng.choice(sorted(victims, key=lambda p: p.pid))
        try:
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(f"{victim.pid}@{time.monotonic():.2f}")
        except ProcessLookupError:
            pass
    return killed


async def _wait_healthy(base: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            got = await _call(http, "GET", f"{base}/healthz")
            if got is not None and got[0] == 200:
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"the service did not come back within {timeout_s}s")


@whole_machine
@pytest.mark.timeout(300)
async def test_service_killed_again_and_again_loses_no_confirmed_order(
    settings: Settings,
) -> None:
    rng = random.Random(SEED)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flashsale", "serve", "--port", str(port), "--workers", "2",
        env=flashsale_env(settings, FLASHSALE_WRITER_RECLAIM_IDLE_MS="1000",
                          FLASHSALE_RESTART_DELAY_S="0.05"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    ledger = Ledger()
    try:
        await _wait_healthy(base)
        stock = 100_000
        admin = {"Authorization": f"Bearer {settings.admin_token}"}
        async with aiohttp.ClientSession() as http:
            got = await _call(http, "POST", f"{base}/v1/admin/sales",
                              json=sale_spec(stock=stock), headers=admin)  # fmt: skip
        assert got is not None
        assert got[0] == 201, got
        sale_id = got[1]["sale"]["sale_id"]

        started = time.monotonic()
        stop = asyncio.Event()
        crowd = asyncio.create_task(_crowd(base, sale_id, settings.token_secret, rng, ledger, stop))
        killed = await _killer(proc.pid, rng)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(crowd, 120)
        assert len(killed) == KILLS

        print(f"crowd and killer: {time.monotonic() - started:.1f}s")
        await _wait_healthy(base)
        print(f"healthy again: {time.monotonic() - started:.1f}s")
        rows = await _orders_when_written(settings, sale_id, ledger)
        print(f"written and reconciled: {time.monotonic() - started:.1f}s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    where = f"(seed {SEED}, {KILLS} kills; answers {dict(ledger.answers)})"
    print(f"{len(ledger.confirmed)} confirmed, {len(ledger.paid)} paid, {where}")
    assert ledger.confirmed, f"no buy was confirmed {where}"
    for order_id, user in ledger.confirmed.items():
        assert order_id in rows, f"confirmed order {order_id} missing in PostgreSQL {where}"
        assert rows[order_id]["user_id"] == user, where
    for order_id in ledger.paid:
        assert rows[order_id]["status"] == "paid", where
    for order_id in ledger.cancelled:
        assert rows[order_id]["status"] == "cancelled", where
    kept = [o for o in ledger.confirmed if o not in ledger.cancel_sent]
    for order_id in kept:  # nothing a shopper was told they have is gone
        assert rows[order_id]["status"] in ("reserved", "paid"), where
    held = Counter(r["user_id"] for r in rows.values() if r["status"] in ("reserved", "paid"))
    assert not [u for u, n in held.items() if n > 1], f"a shopper holds two units {where}"
    sold = sum(r["quantity"] for r in rows.values() if r["status"] in ("reserved", "paid"))
    assert len(kept) <= sold <= len(ledger.attempted), where
    code, out, err = await run_flashsale(settings, "reconcile", sale_id)
    assert code == 0, f"{out}{err} {where}"


async def _orders_when_written(
    settings: Settings, sale_id: str, ledger: Ledger
) -> dict[str, asyncpg.Record]:
    """The sale's orders, once PostgreSQL holds every order Redis holds."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        deadline = time.monotonic() + 60
        while True:
            code, _, _ = await run_flashsale(settings, "reconcile", sale_id)
            if code == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        # read after the stores agreed (read before, a row written meanwhile would be missed)
        rows = await conn.fetch(
            "SELECT order_id, user_id, quantity, status, version FROM orders WHERE sale_id = $1",
            sale_id,
        )
        return {r["order_id"]: r for r in rows}
    finally:
        await conn.close()
