"""Where the rehearsal's order events come from.

- **Its own receiver** (flashsale/outbox/receiver.py), when it starts the service: the driver
  runs it in a thread of its own (an event loop of its own) on a free local port, and the
  service's relay delivers to it (FLASHSALE_WEBHOOK_URLS). What arrived, in the order it
  arrived, is judged, delivery order included.
- **The pull API** (``GET /v1/admin/events``), when the service was already running
  (``--service``): its relay cannot be pointed at this receiver, so the events are read back
  page by page, in commit order. Completeness and ids are judged; delivery order is not (it is
  the relay's promise, not the pull API's).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future
from urllib.parse import quote

from flashsale.outbox.receiver import Arrival, EventReceiver
from loadtest.rehearsal.api import Api

PAGE = 1000


class ReceiverThread:
    """An ``EventReceiver`` serving from a thread, for the driver's synchronous code."""

    def __init__(self, secret: str) -> None:
        self._receiver = EventReceiver(secret)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="events-receiver",
                                        daemon=True)  # fmt: skip
        self.url = ""

    def start(self) -> str:
        self._thread.start()
        started: Future[str] = asyncio.run_coroutine_threadsafe(self._receiver.start(), self._loop)
        self.url = started.result(timeout=10)
        return self.url

    @property
    def refused(self) -> int:
        return self._receiver.refused

    def arrivals(self) -> list[Arrival]:
        """What arrived so far, in arrival order (a copy)."""
        return list(self._receiver.arrivals)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._receiver.stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


class PulledEvents:
    """The events ``GET /v1/admin/events`` gives, from the first on, read as far as they go
    each time ``pull`` is called."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.cursor: str | None = None
        self.events: list[Arrival] = []

    def pull(self) -> list[Arrival]:
        while True:
            query = f"?limit={PAGE}" + (f"&after={quote(self.cursor)}" if self.cursor else "")
            page = self.api.call("GET", f"/v1/admin/events{query}")
            now = time.time()
            for e in page["events"]:
                self.events.append(Arrival.from_event(e["id"], e, now))
            self.cursor = page["next_cursor"]
            if len(page["events"]) < PAGE:
                return list(self.events)
