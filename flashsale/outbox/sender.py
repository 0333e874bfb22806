"""A lean HTTP/1.1 client for the relay: POSTs to one receiver URL over keep-alive connections.

aiohttp's client spent about 0.2 ms of CPU a request in Python (a request and a response
object, header multidicts, a payload object, timers, tracing hooks): most of the relay's cost
an event, which made the relay the bottleneck of a launch's hand-off. Here a request is one
``bytes`` written to the socket, and its answer is read by httptools' ``HttpResponseParser``:
llhttp, the parser of Node.js, in C. Parsing a response is where a hand-written client goes
wrong (1xx interim answers, chunked bodies and their trailers, two Content-Lengths, one with
Transfer-Encoding, bare line feeds: framing that a proxy and the receiver could each read
their own way), so it is left to a parser made for it, the one Node.js's HTTP runs on; it
also costs fewer instructions than the hand parser it replaced (BENCHMARKS.md, 2026-12-02,
the relay: 173,000 to 155,000 an event). llhttp finds where a response ends (Content-Length,
chunked, or the connection's close) and whether the connection can carry the next one; the
body is skipped inside llhttp: a receiver's status is all the relay acts on. What llhttp
refuses is a ``BadResponse``, with llhttp's reason.

Only what the relay needs: ``http`` and ``https`` (certificates verified), no proxies, no
redirects (a 3xx is an answer like any other non-2xx), no compression. ``post_many`` sends a
batch over up to ``connections`` connections at once, each carrying one request at a time
(no pipelining: few servers do it right). A request that gets no complete answer within
``timeout_s`` (connecting included) fails; if its status line and headers had come (and the
body was late, or cut short by a close), that status stands.
A connection reused after a pause may have been closed by the server just as the request
went out: a request that then gets not a byte of answer is sent once more on a new one
(at least once: the receiver may see it twice, under the same webhook-id).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

_MAX_HEAD_BYTES = 64 * 1024  # a response's status line and headers
_MAX_ERROR_CHARS = 500
# a connection idle this long is not reused: servers close idle ones (uvicorn after 5 s),
# and one closed just as a request goes out costs that request a second send
IDLE_S = 4.0


@dataclass(frozen=True, slots=True)
class Answer:
    """What became of one POST."""

    ok: bool  # a 2xx
    gone: bool = False  # 410: the receiver asks to be sent nothing more
    error: str | None = None  # for a failure: the status, or what went wrong


class BadResponse(Exception):
    """What the receiver sent is not an HTTP/1.x response this client can follow."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time. Its answers are parsed by llhttp
    (httptools), one parser for the connection's life: after a response that leaves the
    connection open, llhttp starts on the next by itself; after any other end (an error, a
    timeout, a close) the connection is closed, so a parser is never fed in a broken state."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False  # the last response ended cleanly and the server keeps it open
        self.idle_since = 0.0
        self.status = 0  # of the response being read; 0 until its head (a final one) is whole
        self._waiter: asyncio.Future[int] | None = None
        self._got_bytes = False
        self._head_bytes = 0  # bytes of the answer so far while its head is not whole
        self._complete = False  # the response has ended (by its length, chunks or none)
        self._keep_alive = False
        # the callbacks llhttp calls are found by name on this object: only those below, so
        # the body, the headers and the chunks are skipped inside llhttp, never made bytes
        self._parser = httptools.HttpResponseParser(self)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: the connection's framing is lost
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # a callback's own objection comes back as the context of llhttp's error
            cause = exc.__context__
            self._finish(cause if isinstance(cause, BadResponse) else BadResponse(str(exc)))
            return
        if self._complete:
            self._end_of_response()
        elif not self.status:
            # llhttp keeps no limit of its own on a head: a server sending headers without
            # end would be read until the timeout
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD_BYTES:
                self._finish(BadResponse("a response head over 64 KiB"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self.status:
            # the body ends here (a response without a length; httptools has no call to tell
            # llhttp so), or is cut short: either way the status came, and stands
            self._finish(None)
        elif self._waiter is not None and not self._waiter.done():
            self._finish(ConnectionResetError("the receiver closed the connection"))

    # -- llhttp's callbacks (during feed_data)

    def on_message_begin(self) -> None:
        if self._complete:  # more than one response to one request
            raise BadResponse("bytes after the response")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 100:
            raise BadResponse(f"HTTP {status}")
        if status < 200:
            if status == 101:  # Switching Protocols: not for a POST
                raise BadResponse("HTTP 101")
            return  # an interim response: llhttp reads the real one that follows
        self.status = status

    def on_message_complete(self) -> None:
        if self.status:  # not an interim response's end
            self._complete = True
            self._keep_alive = self._parser.should_keep_alive()

    # -- the client's side

    def send(self, request: bytes) -> asyncio.Future[int]:
        """Write ``request``; the future is the response's status, once it has ended."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._got_bytes = False
        self.reusable = False
        self.status = 0
        self._head_bytes = 0
        self._complete = False
        self.transport.write(request)
        return self._waiter

    @property
    def answered_nothing(self) -> bool:
        return not self._got_bytes

    def expire(self) -> None:
        """The request's time is up: its status, if that much came, else TimeoutError. The
        connection is closed either way (where its response ends is not known)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self.status:
                waiter.set_result(self.status)
            else:
                waiter.set_exception(TimeoutError())
        self.close()

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _finish(self, error: Exception | None) -> None:
        waiter = self._waiter
        if error is not None:
            self.close()
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(self.status)
            else:
                waiter.set_exception(error)

    def _end_of_response(self) -> None:
        self.reusable = self._keep_alive  # llhttp's reading of Connection and the version
        if not self.reusable:
            self.close()
        self._finish(None)


class Sender:
    """POSTs to ``url`` (``http`` or ``https``), keeping up to ``connections`` connections."""

    def __init__(self, url: str, *, timeout_s: float, connections: int, user_agent: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.timeout_s = timeout_s
        self.connections = max(1, connections)
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = parts.port is None or parts.port == (443 if self._ssl else 80)
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        authority = host if default_port else f"{host}:{parts.port}"
        self._prefix = (
            f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {user_agent}\r\n"
            "Content-Type: application/json\r\n"
        ).encode("ascii")
        self._idle: list[_Connection] = []

    async def post_many(self, messages: Sequence[tuple[Mapping[str, str], bytes]]) -> list[Answer]:
        """POST each (headers, body); the answers in the same order."""
        answers: list[Answer] = [_NOT_SENT] * len(messages)
        todo = iter(range(len(messages)))

        async def worker() -> None:
            for i in todo:
                headers, body = messages[i]
                answers[i] = await self.post(self.request(headers, body))

        workers = min(self.connections, len(messages))
        if workers == 1:
            await worker()
        else:
            await asyncio.gather(*(worker() for _ in range(workers)))
        return answers

    def request(self, headers: Mapping[str, str], body: bytes) -> bytes:
        """The bytes of a POST of ``body`` with ``headers`` (values without line breaks)."""
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
            raise ValueError("a header name or value with a line break")
        return b"".join(
            (self._prefix, lines.encode(), b"Content-Length: %d\r\n\r\n" % len(body), body)
        )

    async def post(self, request: bytes) -> Answer:
        """Send one request (from ``request``); never raises but for cancellation."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        connection: _Connection | None = None
        try:
            for attempt in range(2):
                connection = self._take_idle()
                reused = connection is not None
                if connection is None:
                    connection = await self._connect(deadline)
                try:
                    status = await self._exchange(connection, request, deadline)
                except ConnectionError:
                    if reused and attempt == 0 and connection.answered_nothing:
                        continue  # closed by the server as it went out: once more, anew
                    raise
                if connection.reusable:
                    connection.idle_since = time.monotonic()
                    self._idle.append(connection)
                    connection = None
                if 200 <= status < 300:
                    return Answer(ok=True)
                return Answer(ok=False, gone=status == 410, error=f"HTTP {status}")
            raise AssertionError("unreachable")  # pragma: no cover
        except TimeoutError:
            return Answer(ok=False, error=f"no answer within {self.timeout_s:g} s")
        except (OSError, BadResponse) as exc:
            return Answer(ok=False, error=_shorten(f"{type(exc).__name__}: {exc}"))
        finally:
            if connection is not None and not connection.reusable:
                connection.close()

    async def _exchange(self, connection: _Connection, request: bytes, deadline: float) -> int:
        waiter = connection.send(request)
        timer = asyncio.get_running_loop().call_at(deadline, connection.expire)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < IDLE_S:
                return connection
            connection.close()
        return None

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(deadline):
            _, connection = await loop.create_connection(
                _Connection, self._host, self._port, ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )  # fmt: skip
        return connection

    def close(self) -> None:
        """Close the idle connections (those in use close when their request ends)."""
        for connection in self._idle:
            connection.close()
        self._idle.clear()


_NOT_SENT = Answer(ok=False, error="not sent")


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"
