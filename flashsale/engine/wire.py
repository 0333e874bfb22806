"""A lean Redis connection for the coalescer's batches: asyncio.Protocol plus hiredis.

redis-py spends most of a call in Python (pool checkout, a timeout context and a parser call
per reply); here a batch is one ``transport.write`` and its replies are parsed by hiredis as
they arrive, completing one future per batch. Only what the hot path needs: send packed
commands, get their replies in order, with errors as values. One connection carries every
batch (Redis answers in order, so batches simply queue behind each other), reconnecting when
it breaks; every waiting batch then fails with ``ConnectionError`` and its callers decide.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def _reply_error(message: str) -> ResponseError:
    # the one error reply the scripts' caller acts on: Redis forgot the script (restart)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)


@dataclass(slots=True)
class _Batch:
    count: int
    future: asyncio.Future[list[Any]]
    replies: list[Any] = field(default_factory=list)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(encoding="utf-8", replyError=ResponseError)
        self.waiting: collections.deque[_Batch] = collections.deque()
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if isinstance(reply, ResponseError):
                reply = _reply_error(str(reply))
            batch = self.waiting[0]
            batch.replies.append(reply)
            if len(batch.replies) == batch.count:
                self.waiting.popleft()
                if not batch.future.done():
                    batch.future.set_result(batch.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = ConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        while self.waiting:
            batch = self.waiting.popleft()
            if not batch.future.done():
                batch.future.set_exception(self.lost)


class Wire:
    """One Redis connection for packed batches; see the module docstring."""

    def __init__(self, url: str, *, connect_timeout_s: float = 2.0, timeout_s: float = 5.0) -> None:
        if not self.supports(url):
            raise ValueError("the lean connection takes redis://host:port/db URLs only")
        self._options = parse_url(url)
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        # the connect attempt under way: every caller that needs a connection meanwhile waits
        # for this one attempt and shares its outcome, so an outage costs one attempt per
        # burst of callers instead of one after another (each up to the connect timeout)
        self._attempt: asyncio.Future[_Protocol] | None = None
        self._closed = False

    @staticmethod
    def supports(url: str) -> bool:
        """Plain TCP only: TLS (rediss://) and unix sockets stay with redis-py."""
        return url.startswith("redis://") and "host" in parse_url(url)

    async def send(self, packed: bytes, count: int) -> list[Any]:
        """Send ``count`` packed commands; their replies in order, an error reply as its
        exception (not raised)."""
        protocol = await self._connected()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        protocol.waiting.append(_Batch(count, future))
        assert protocol.transport is not None
        protocol.transport.write(packed)
        try:
            return await asyncio.wait_for(future, self._timeout_s)
        except TimeoutError:
            # the stream can no longer be trusted to line up replies with requests
            self._drop(protocol)
            raise RedisTimeoutError("Redis did not answer in time") from None

    async def close(self) -> None:
        self._closed = True  # no reconnecting after shutdown
        if self._protocol is not None:
            self._drop(self._protocol)

    def _drop(self, protocol: _Protocol) -> None:
        if protocol.transport is not None:
            protocol.transport.abort()  # connection_lost fails whatever still waits
        if self._protocol is protocol:
            self._protocol = None

    async def _connected(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._closed:
            raise ConnectionError("the connection to Redis is closed")
        if self._attempt is None:
            self._attempt = asyncio.ensure_future(self._connect())
            self._attempt.add_done_callback(self._attempt_done)
        return await asyncio.shield(self._attempt)

    def _attempt_done(self, attempt: asyncio.Future[_Protocol]) -> None:
        self._attempt = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._protocol = attempt.result()

    async def _connect(self) -> _Protocol:
        o = self._options
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(_Protocol, o.get("host", "127.0.0.1"), o.get("port", 6379)),
                self._connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"cannot connect to Redis: {exc}") from None
        setup: list[tuple[Any, ...]] = []
        if o.get("password"):
            user = o.get("username")
            setup.append(("AUTH", user, o["password"]) if user else ("AUTH", o["password"]))
        if o.get("db"):
            setup.append(("SELECT", o["db"]))
        if setup:
            future: asyncio.Future[list[Any]] = loop.create_future()
            protocol.waiting.append(_Batch(len(setup), future))
            assert protocol.transport is not None
            protocol.transport.write(b"".join(hiredis.pack_command(c) for c in setup))
            try:
                replies = await asyncio.wait_for(future, self._timeout_s)
            except (TimeoutError, ConnectionError) as exc:
                protocol.transport.abort()
                raise ConnectionError(f"Redis did not set up the connection: {exc}") from None
            for reply in replies:
                if isinstance(reply, Exception):
                    protocol.transport.abort()
                    raise ConnectionError(f"Redis refused the connection setup: {reply}")
        return protocol
