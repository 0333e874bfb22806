"""Slow clients cannot hold connections: a body that dribbles in gets 408 and the connection
is closed; a connection that never completes its request headers is closed by ``serve``."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import orjson

from flashsale.auth import issue_token
from flashsale.settings import Settings
from tests.conftest import ServiceFactory
from tests.helpers import flashsale_env


async def _read_all(reader: asyncio.StreamReader, timeout_s: float) -> tuple[bytes, float]:
    """Everything until the server closes the connection, and when it did."""
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), timeout_s)
    return data, time.monotonic() - started


async def test_a_dribbled_body_gets_408_and_the_connection_closed(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(body_timeout_s=0.5)
    sale = await service.create_sale(stock=3)
    port = service.client.server.port
    token = issue_token(service.settings.token_secret, "slowpoke")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /v1/sales/{sale['sale_id']}/buy HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        "Content-Length: 10\r\n\r\n{".encode()
    )
    await writer.drain()
    data, waited = await _read_all(reader, 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data
    assert orjson.loads(body)["error"] == "request_timeout"
    assert 0.4 < waited < 3, waited  # answered at the deadline, then closed (read() ended)
    assert (await service.stats(sale["sale_id"]))["reserved"] == 0


async def test_serve_closes_connections_that_never_finish_a_request(settings: Settings) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flashsale", "serve", "--single-process", "--port", str(port),
        env=flashsale_env(settings, FLASHSALE_KEEPALIVE_TIMEOUT_S="1"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not start"
                await asyncio.sleep(0.1)
        _, idle_for = await _read_all(reader, 10)  # sends nothing at all
        writer.close()
        assert idle_for < 3, idle_for

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        try:
            for line in (b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n",
                         b"X-B: 1\r\n", b"X-C: 1\r\n", b"X-D: 1\r\n"):  # fmt: skip
                writer.write(line)
                await writer.drain()
                await asyncio.sleep(0.5)
            data = await asyncio.wait_for(reader.read(), 5)
            assert data == b"", data  # never answered: closed
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed while we were still dribbling
        assert time.monotonic() - started < 5
        writer.close()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)
