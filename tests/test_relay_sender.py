"""The relay's HTTP client (outbox/sender.py) against a real TCP server that answers exactly as
each test scripts it: the ways a response can end, keep-alive and its races, timeouts, and
answers that are not HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from flashsale.outbox.sender import Answer, Sender

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

# Given one request (head and body): the bytes to write back (the connection is closed after
# them if they say "Connection: close"), or None to close it without a word
Script = Callable[["Server", int, bytes], Awaitable[bytes | None]]


@dataclass
class Server:
    """A TCP server on loopback reading HTTP/1.1 requests with Content-Length bodies."""

    script: Script
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    url: str = ""
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hooks?v=1"
        return self

    async def stop(self) -> None:
        for task in self._handlers:
            task.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = await self.script(self, number, request)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if b"\r\nConnection: close\r\n" in answer:
                    return
        finally:
            writer.close()


@pytest.fixture
async def serving() -> AsyncIterator[Callable[[Script], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(script: Script) -> Server:
        server = await Server(script).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def sender(url: str, timeout_s: float = 2.0, connections: int = 4) -> Sender:
    return Sender(url, timeout_s=timeout_s, connections=connections, user_agent="flashsale/t")


def answering(response: bytes) -> Script:
    async def script(server: Server, connection: int, request: bytes) -> bytes:
        return response

    return script


HEADERS = {"webhook-id": "evt_1", "webhook-timestamp": "1700000000", "webhook-signature": "v1,x"}


async def test_a_post_is_what_a_receiver_expects_and_connections_are_kept(
    serving: Callable[[Script], Awaitable[Server]],
) -> None:
    server = await serving(answering(OK))
    s = sender(server.url, connections=1)
    bodies = [b'{"n": %d}' % i for i in range(5)]
    answers = await s.post_many([(HEADERS, body) for body in bodies])
    assert answers == [Answer(ok=True)] * 5
    assert server.connections == 1  # one keep-alive connection carried all five
    head, body = server.requests[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /hooks?v=1 HTTP/1.1"
    host = server.url.split("/")[2].encode()
    assert set(lines[1:]) == {
        b"Host: " + host, b"User-Agent: flashsale/t", b"Content-Type: application/json",
        b"webhook-id: evt_1", b"webhook-timestamp: 1700000000", b"webhook-signature: v1,x",
        b"Content-Length: 8",
    }  # fmt: skip
    assert body == b'{"n": 0}'
    s.close()


async def test_a_batch_goes_out_over_several_connections_at_once(
    serving: Callable[[Script], Awaitable[Server]],
) -> None:
    in_flight = 0
    most = 0

    async def slow(server: Server, connection: int, request: bytes) -> bytes:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return OK

    server = await serving(slow)
    s = sender(server.url, connections=4)
    answers = await s.post_many([(HEADERS, b"{}")] * 12)
    assert answers == [Answer(ok=True)] * 12
    assert most == 4
    assert server.connections == 4
    s.close()


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + b"x" * 70000,
        b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["chunked", "no body", "interim 100", "a long body", "interim 102 and 103", "1.0 kept"],
)
async def test_every_way_a_response_ends_keeps_the_connection(
    serving: Callable[[Script], Awaitable[Server]], response: bytes
) -> None:
    server = await serving(answering(response))
    s = sender(server.url, connections=1)
    assert await s.post_many([(HEADERS, b"{}")] * 3) == [Answer(ok=True)] * 3
    assert server.connections == 1
    s.close()


async def test_a_response_ended_by_closing_the_connection(
    serving: Callable[[Script], Awaitable[Server]],
) -> None:
    server = await serving(
        answering(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of this is the body")
    )
    s = sender(server.url, timeout_s=5, connections=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    answers = await s.post_many([(HEADERS, b"{}")] * 2)
    assert loop.time() - start < 2  # ended by the close, not by the timeout
    assert answers == [Answer(ok=True)] * 2
    assert server.connections == 2  # not reused
    s.close()


async def test_statuses_other_than_2xx_are_failures_and_410_is_gone(
    serving: Callable[[Script], Awaitable[Server]],
) -> None:
    statuses = iter([500, 410, 302, 404])

    async def script(server: Server, connection: int, request: bytes) -> bytes:
        return b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % next(statuses)

    server = await serving(script)
    s = sender(server.url, connections=1)
    answers = await s.post_many([(HEADERS, b"{}")] * 4)
    assert answers == [
        Answer(ok=False, error="HTTP 500"),
        Answer(ok=False, gone=True, error="HTTP 410"),
        Answer(ok=False, error="HTTP 302"),  # redirects are not followed
        Answer(ok=False, error="HTTP 404"),
    ]
    assert server.connections == 1
    s.close()


async def test_no_answer_in_time_is_a_failure_but_a_status_that_came_stands(
    serving: Callable[[Script], Awaitable[Server]],
) -> None:
    async def script(server: Server, connection: int, request: bytes) -> bytes:
        if b"stall-head" in request:
            await asyncio.sleep(5)
            return OK
        # the status line and headers, then the body never comes
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome"

    server = await serving(script)
    s = sender(server.url, timeout_s=0.3, connections=2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    answers = await s.post_many([(HEADERS, b"stall-head"), (HEADERS, b"stall-body")])
    assert loop.time() - start < 2
    assert answers == [Answer(ok=False, error="no answer within 0.3 s"), Answer(ok=True)]
    s.close()


async def test_a_status_stands_when_the_body_is_cut_short(
    serving: Callable[[Script], Awaitable[Server]],
) -> None:
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nsome"
    server = await serving(answering(cut))
    s = sender(server.url, timeout_s=5, connections=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await s.post_many([(HEADERS, b"{}")] * 2) == [Answer(ok=True)] * 2
    assert loop.time() - start < 2
    assert server.connections == 2
    s.close()


async def test_a_reused_connection_closed_as_the_request_went_out_is_tried_once_more(
    serving: Callable[[Script], Awaitable[Server]],
) -> None:
    """A server closing an idle keep-alive connection just as a request is written on it:
    the request is sent again on a new connection (the receiver may see it twice, as at
    least once allows). On a new connection the same is a failure."""

    async def closes_second_request(
        server: Server, connection: int, request: bytes
    ) -> bytes | None:
        if connection == 1 and len(server.requests) == 2:
            return None  # closed without a byte of answer
        return OK

    server = await serving(closes_second_request)
    s = sender(server.url, connections=1)
    assert await s.post_many([(HEADERS, b'{"n": 1}')]) == [Answer(ok=True)]
    assert await s.post_many([(HEADERS, b'{"n": 2}')]) == [Answer(ok=True)]
    assert server.connections == 2
    assert [r.endswith(b'{"n": 2}') for r in server.requests] == [False, True, True]

    async def never_answers(server: Server, connection: int, request: bytes) -> bytes | None:
        return None

    server = await serving(never_answers)
    s = sender(server.url, connections=1)
    (answer,) = await s.post_many([(HEADERS, b"{}")])
    assert not answer.ok
    assert answer.error == "ConnectionResetError: the receiver closed the connection"
    assert server.connections == 1
    s.close()


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "BadResponse: Expected HTTP/, RTSP/ or ICE/"),
        (b"HTTP/1.1 2x0 OK\r\n\r\n", "BadResponse: Invalid status code"),
        (b"HTTP/1.1 099 OK\r\nContent-Length: 0\r\n\r\n", "BadResponse: HTTP 99"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n", "BadResponse: Invalid character"
         " in Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "BadResponse: Invalid"
         " character in chunk size"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "BadResponse: HTTP 101"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 12_000, "BadResponse: a response head over"
         " 64 KiB"),
        # framing a proxy and the receiver could each read their own way (request smuggling)
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 12\r\n\r\nok",
         "BadResponse: Duplicate Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
         "BadResponse: Content-Length can't be present with Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", "BadResponse: Missing expected CR after"
         " response line"),
        (OK + OK, "BadResponse: bytes after the response"),
    ],
    ids=["not http", "bad status", "status 99", "bad length", "bad chunk", "101",
         "endless head", "two lengths", "length and chunked", "bare LF", "two answers"],
)  # fmt: skip
async def test_what_is_not_an_http_answer_is_a_failure(
    serving: Callable[[Script], Awaitable[Server]], response: bytes, error: str
) -> None:
    server = await serving(answering(response))
    s = sender(server.url, connections=1)
    assert await s.post_many([(HEADERS, b"{}")]) == [Answer(ok=False, error=error)]
    s.close()


async def test_nobody_listening_is_a_failure_that_says_so() -> None:
    with contextlib.closing(await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)) as srv:
        port = srv.sockets[0].getsockname()[1]
    await asyncio.sleep(0)
    (answer,) = await sender(f"http://127.0.0.1:{port}/h").post_many([(HEADERS, b"{}")])
    assert not answer.ok
    assert answer.error is not None
    assert answer.error.startswith("ConnectionRefusedError")


def test_a_header_cannot_smuggle_another() -> None:
    s = sender("http://127.0.0.1:1/h")
    with pytest.raises(ValueError, match="line break"):
        s.request({"webhook-id": "evt_1\r\nX-Admin: yes"}, b"{}")
    with pytest.raises(ValueError, match="not an http"):
        sender("ftp://127.0.0.1/h")
    assert s.request({}, b"{}").startswith(b"POST /h HTTP/1.1\r\nHost: 127.0.0.1:1\r\n")
    assert (
        sender("https://shop.example/h")
        .request({}, b"")
        .startswith(b"POST /h HTTP/1.1\r\nHost: shop.example\r\n")
    )
