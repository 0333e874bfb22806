"""A webhook receiver that counts order events, for the demo and rehearsals: the shop's end of
the relay, as small as it can be.

It listens on a free local port, verifies each delivery's Standard Webhooks signature
(webhooks/signing.py, with the key of FLASHSALE_WEBHOOK_SECRET), records what arrived (event
id, order, sequence, type, when) and answers 200; a delivery it cannot verify or read is
answered 400 and counted. Every delivery is recorded, repeats too: what arrived, in the order
it arrived, is what handoff_checks.py judges.

It is aiohttp's low-level server (one handler, no application, router or middlewares): in a
rehearsal it shares the machine with the sale and the relay, and takes a request of every
event of the launch.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import orjson
from aiohttp import web

from flashsale.webhooks import signing

PATH = "/events"


@dataclass(frozen=True, slots=True)
class Arrival:
    """One event as it arrived (or as the pull API gave it)."""

    event_id: str  # the webhook-id: the same on every delivery of the event
    order_id: str | None
    sale_id: str | None
    sequence: int | None  # None for a payment naming no order of ours
    type: str
    at: float  # Unix seconds, when it arrived

    @classmethod
    def from_event(cls, event_id: str, event: object, at: float) -> Arrival:
        """From an event's JSON (``{"type", "timestamp", "data"}``); ValueError if it is not
        one."""
        if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
            raise ValueError("not an order event")
        data = event["data"]
        sequence = data.get("sequence")
        if not isinstance(event.get("type"), str) or not (
            sequence is None or isinstance(sequence, int)
        ):
            raise ValueError("not an order event")
        order_id, sale_id = data.get("order_id"), data.get("sale_id")
        return cls(
            event_id=event_id,
            order_id=order_id if isinstance(order_id, str) else None,
            sale_id=sale_id if isinstance(sale_id, str) else None,
            sequence=sequence,
            type=event["type"],
            at=at,
        )


class EventReceiver:
    """Receives the relay's deliveries signed with ``secret`` (``whsec_...``)."""

    def __init__(self, secret: str) -> None:
        self.key = signing.parse_secret(secret)
        self.arrivals: list[Arrival] = []
        self.refused = 0  # deliveries answered 400: a bad signature or not an order event
        self.url = ""
        self._runner: web.ServerRunner | None = None

    async def start(self, host: str = "127.0.0.1") -> str:
        """Listen on a free port of ``host``; the URL to give FLASHSALE_WEBHOOK_URLS."""
        server = web.Server(self._receive, access_log=None)
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://{host}:{port}{PATH}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _receive(self, request: web.BaseRequest) -> web.Response:
        if request.path != PATH:
            return web.Response(status=404)
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        body = await request.read()
        now = time.time()
        try:
            verified = signing.verify([self.key], request.headers, body, now)
            arrival = Arrival.from_event(verified.msg_id, orjson.loads(body), now)
        except (signing.SignatureError, ValueError):  # orjson.JSONDecodeError is a ValueError
            self.refused += 1
            return web.Response(status=400)
        self.arrivals.append(arrival)
        return web.Response(status=200)
