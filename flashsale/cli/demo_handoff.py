"""The demo's checkout hand-off: a simulated payment service pays the winners (signed
notifications; some late, some delivered twice, some notified again under a new webhook-id, a
few for the wrong amount first), and a receiver on a local port takes the order events the
relay, run here as a task, delivers to it. Once the sale has come to rest, the checks of
handoff_checks.py are printed.

The demo's events go to its own receiver only (FLASHSALE_WEBHOOK_URLS is not used; without
FLASHSALE_WEBHOOK_SECRET a secret is made up), which is forgotten again at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import asyncpg

from flashsale.handoff_checks import (
    Check,
    EventFindings,
    check_events,
    expected_events,
    held_units,
    payment_checks,
    units_check,
)
from flashsale.outbox import receivers
from flashsale.outbox.receiver import EventReceiver
from flashsale.outbox.relay import Relay, RelayConfig
from flashsale.payments.simulator import PaymentMix, PaymentService, Settlement
from flashsale.settings import Settings
from flashsale.store.database import open_pool
from flashsale.store.migrate import migration_parameters
from flashsale.webhooks.signing import new_secret

SAMPLE_S = 0.1  # how often the units are sampled
EVENTS_WAIT_S = 60.0  # the longest wait for the last event after PostgreSQL has every order


@dataclass
class Handoff:
    payments: PaymentService
    receiver: EventReceiver
    pool: asyncpg.Pool
    relay: asyncio.Task[None]
    # the winners' checkouts (a cancel) and the units' samples: connections of their own, so
    # that a crowd holding every connection of its session keeps neither waiting
    checkout: aiohttp.ClientSession
    held: list[int] = field(default_factory=list)  # paid + reserved units, per sample
    _watch: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls, settings: Settings, base_url: str, pool: asyncpg.Pool, mix: PaymentMix
    ) -> Handoff:
        secret = settings.webhook_secret or new_secret()
        receiver = EventReceiver(secret)
        url = await receiver.start()
        await receivers.register(pool, url)  # it gets every event committed from now on
        config = RelayConfig.from_settings(
            replace(settings, webhook_urls=(url,), webhook_secret=secret)
        )
        relay = asyncio.create_task(_relay(settings, config), name="order events relay")
        payments = PaymentService(base_url, settings.payment_secrets[0], mix=mix)
        return cls(payments, receiver, pool, relay, aiohttp.ClientSession(base_url))

    async def close(self) -> None:
        for task in (self._watch, self.relay):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.payments.close()
        await self.checkout.close()
        await self.receiver.stop()
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            await receivers.remove(self.pool, self.receiver.url)

    def watch(self, admin: dict[str, str], sale_id: str) -> None:
        """Sample the sale's paid + reserved units until ``close`` (on connections the crowd
        does not hold)."""

        async def sample() -> None:
            while True:
                with contextlib.suppress(aiohttp.ClientError, KeyError, ValueError):
                    self.held.append(await _held(self.checkout, admin, sale_id))
                await asyncio.sleep(SAMPLE_S)

        self._watch = asyncio.create_task(sample(), name="units watch")

    async def come_to_rest(
        self, http: aiohttp.ClientSession, admin: dict[str, str], sale_id: str, timeout_s: float
    ) -> None:
        """Wait until no unit of the sale is held: every reservation paid, cancelled or
        expired, so nothing more changes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            async with http.get(f"/v1/admin/sales/{sale_id}/stats", headers=admin) as resp:
                stats: dict[str, Any] = (await resp.json())["stats"]
            self.held.append(held_units(stats))
            if stats["reserved"] == 0:
                return
            await asyncio.sleep(0.2)

    async def events(self, sale_id: str) -> EventFindings:
        """The sale's events as the receiver got them, once all have arrived (or after
        ``EVENTS_WAIT_S``)."""
        deadline = time.monotonic() + EVENTS_WAIT_S
        while True:
            # arrivals first: PostgreSQL then holds every change they tell of, and more
            arrivals = list(self.receiver.arrivals)
            expected = await expected_events(self.pool, sale_id)
            findings = check_events(sale_id, arrivals, expected)
            if findings.complete or time.monotonic() > deadline:
                return findings
            await asyncio.sleep(0.2)

    async def report(self, sale_id: str, stock: int, settlements: list[Settlement]) -> list[str]:
        """Print what the payment service and the receiver saw, and the checks; the problems."""
        print_payments(settlements)
        findings = await self.events(sale_id)
        gap = findings.gap_s
        after = "" if gap is None else f"; the last {gap:.2f} s after its change was written"
        print(
            f"order events: {findings.deliveries:,} deliveries to the receiver at "
            f"{self.receiver.url} ({findings.repeats:,} repeated, {self.receiver.refused} "
            f"refused){after}"
        )
        problems: Counter[str] = Counter(p for s in settlements for p in s.problems)
        checks: list[Check] = await payment_checks(
            self.pool, sale_id, answered_without_reason=problems["refund_required without a reason"]
        )
        checks += [findings.check(), units_check(stock, self.held)]
        for check in checks:
            print(check.line())
        found = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
        found += [f"payment service: {n} x {p}" for p, n in problems.most_common()]
        return found


def print_payments(settlements: list[Settlement]) -> None:
    kinds = Counter(s.kind.value for s in settlements)
    refunds = Counter(
        str(a.get("reason")) for s in settlements for a in s.answers
        if a.get("outcome") == "refund_required"
    )  # fmt: skip
    paid = sum(s.paid for s in settlements)
    late = sum(s.late for s in settlements)
    notifications = ", ".join(f"{k} {n:,}" for k, n in kinds.most_common())
    print(f"payment service: {len(settlements):,} orders ({notifications}); {paid:,} paid "
          f"({late:,} late), refunds: "
          + (", ".join(f"{r} {n:,}" for r, n in refunds.most_common()) or "none"))  # fmt: skip


async def _held(http: aiohttp.ClientSession, admin: dict[str, str], sale_id: str) -> int:
    async with http.get(f"/v1/admin/sales/{sale_id}/stats", headers=admin) as resp:
        return held_units((await resp.json())["stats"])


async def _relay(settings: Settings, config: RelayConfig) -> None:
    """The relay, as ``flashsale relay`` runs it, on a pool of its own: one connection holds a
    batch's claims while it is sent, one more takes events in."""
    pool = await open_pool(
        settings.database_url,
        max_size=len(config.urls) + 1,
        timeout_s=settings.pg_timeout_s,
        parameters=migration_parameters(default_currency=settings.default_currency),
    )
    try:
        await Relay(pool, config).run()
    finally:
        await pool.close()
