"""For the order events tests: a webhook receiver that checks every signature and records what
arrived, and quick ways to put events in the outbox."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web

from flashsale.ids import new_order_id
from flashsale.outbox.events import STORED_TEXT, record_events
from flashsale.outbox.relay import RelayConfig
from flashsale.settings import Settings
from flashsale.store.orders import OrderRow
from flashsale.webhooks import signing
from tests.helpers import flashsale_env

WEBHOOK_SECRET = "whsec_" + "c2VjcmV0LW9mLXRoZS13ZWJob29rLXRlc3Rz"  # 27 bytes
WEBHOOK_KEY = signing.parse_secret(WEBHOOK_SECRET)
# an event's text in SQL on outbox, as the relay and the pull API read it
EVENT_TEXT = STORED_TEXT.format("")


@dataclass
class Arrival:
    """One request the receiver got."""

    at: float  # time.monotonic() when it arrived
    webhook_id: str
    timestamp: int
    body: bytes
    event: dict[str, Any]
    headers: dict[str, str]

    @property
    def order_id(self) -> str:
        order_id: str = self.event["data"]["order_id"]
        return order_id

    @property
    def sequence(self) -> int:
        """The event's sequence; 0 for one of no order (a payment naming none of ours)."""
        sequence: int = self.event["data"]["sequence"] or 0
        return sequence


# Decides the answer to one arrival: a status, or (seconds to wait first, status)
Behaviour = Callable[["Arrival", "Receiver"], Awaitable[int]]


async def always_ok(arrival: Arrival, receiver: Receiver) -> int:
    return 200


@dataclass
class Receiver:
    """A webhook receiver on a port of its own: verifies each request as the README tells
    receivers to, records it, and answers as ``behaviour`` says."""

    behaviour: Behaviour = always_ok
    arrivals: list[Arrival] = field(default_factory=list)
    bad_signatures: list[str] = field(default_factory=list)
    answered: dict[str, list[int]] = field(default_factory=dict)  # webhook-id -> statuses
    in_flight: dict[str, int] = field(default_factory=dict)
    overlaps: list[str] = field(default_factory=list)  # an id arriving while in flight
    out_of_order: list[str] = field(default_factory=list)
    _delivered_seq: dict[str, int] = field(default_factory=dict)  # order -> highest 2xx'd
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        # a handler still waiting to answer a request the relay gave up on is not waited for
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hooks"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verified = signing.verify([WEBHOOK_KEY], request.headers, body, time.time())
        except signing.SignatureError as exc:
            self.bad_signatures.append(str(exc))
            return web.Response(status=400)
        event = json.loads(body)
        arrival = Arrival(
            time.monotonic(), verified.msg_id, verified.timestamp, body, event,
            {k.lower(): v for k, v in request.headers.items()},
        )  # fmt: skip
        self.arrivals.append(arrival)
        key = arrival.order_id
        # in order per order: sequence k arrives only once k - 1 was answered 2xx (sequences
        # of the test's orders have no gaps), or again after that (a duplicate)
        if arrival.sequence and arrival.sequence > self._delivered_seq.get(key, 0) + 1:
            self.out_of_order.append(f"{key}#{arrival.sequence}")
        if self.in_flight.get(arrival.webhook_id):
            self.overlaps.append(arrival.webhook_id)
        self.in_flight[arrival.webhook_id] = self.in_flight.get(arrival.webhook_id, 0) + 1
        try:
            status = await self.behaviour(arrival, self)
        finally:
            self.in_flight[arrival.webhook_id] -= 1
        self.answered.setdefault(arrival.webhook_id, []).append(status)
        if 200 <= status < 300:
            self._delivered_seq[key] = max(self._delivered_seq.get(key, 0), arrival.sequence)
        return web.Response(status=status)

    def delivered_ids(self) -> set[str]:
        return {i for i, statuses in self.answered.items() if any(200 <= s < 300 for s in statuses)}

    def attempts(self, webhook_id: str) -> list[Arrival]:
        return [a for a in self.arrivals if a.webhook_id == webhook_id]


def relay_config(*urls: str, **overrides: Any) -> RelayConfig:
    """A relay's settings with the test's key and short waits."""
    values: dict[str, Any] = {
        "urls": urls,
        "key": WEBHOOK_KEY,
        "timeout_s": 0.5,
        "retry_base_s": 0.05,
        "retry_cap_s": 0.2,
        "give_up_s": 60.0,
        "gap_wait_s": 60.0,
        "batch_size": 10,
        "poll_s": 0.02,
    }
    values.update(overrides)
    return RelayConfig(**values)


def order_rows(sale_id: str, statuses: Iterable[str], *, user: str = "u") -> list[OrderRow]:
    """One order's changes: the statuses given get versions 1, 2, ..."""
    order_id = new_order_id(sale_id)
    now = int(time.time() * 1000)
    return [
        OrderRow(
            order_id=order_id,
            sale_id=sale_id,
            user_id=user,
            quantity=1,
            status=status,
            version=v,
            expires_ms=now + 60_000,
            created_ms=now,
            updated_ms=now + v,
        )
        for v, status in enumerate(statuses, start=1)
    ]


async def record(pool: asyncpg.Pool, rows: Iterable[OrderRow]) -> None:
    """Put the rows' events in the outbox, in one transaction, as the writer would."""
    async with pool.acquire() as conn, conn.transaction():
        await record_events(conn, list(rows))


async def event_ids(pool: asyncpg.Pool, rows: Iterable[OrderRow]) -> list[str]:
    """The outbox ids of the rows' events, in the rows' order."""
    ids = []
    for r in rows:
        ids.append(
            await pool.fetchval(
                "SELECT event_id FROM outbox WHERE order_id = $1 AND sequence = $2",
                r.order_id,
                r.version,
            )
        )
    return ids


async def run_events_cli(settings: Settings, url: str, *args: str) -> tuple[int, str, str]:
    """``flashsale ARGS`` in a subprocess whose FLASHSALE_WEBHOOK_URLS is ``url``: (exit code,
    stdout, stderr)."""
    env = flashsale_env(
        settings, FLASHSALE_WEBHOOK_URLS=url, FLASHSALE_WEBHOOK_SECRET=WEBHOOK_SECRET
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flashsale", *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.02)


async def pending(pool: asyncpg.Pool, url: str) -> int:
    """Deliveries of ``url`` neither delivered nor given up."""
    n: int = await pool.fetchval(
        "SELECT count(*) FROM outbox_deliveries"
        " WHERE receiver = $1 AND delivered_at IS NULL AND gave_up_at IS NULL",
        url,
    )
    return n
