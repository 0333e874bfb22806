"""How the service reads a request, byte by byte: content codings, media types, the JSON text,
bodies where none belongs, repeated headers, and what aiohttp's HTTP parser refuses. Every
refusal is a JSON ``{"error", "message"}`` that changes nothing, and none of them quotes or logs
the request's bytes (tokens travel in them)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import re
import socket
import sys
import time
import zlib
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from flashsale.auth import issue_token
from flashsale.settings import Settings
from tests.helpers import Service, flashsale_env, sale_spec
from tests.test_bad_input import as_json, assert_error, assert_untouched, raw_call

BODY = b'{"quantity": 2}'


def deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


async def buy_with(
    service: Service, sale: dict[str, Any], user: str, data: bytes, **headers: str
) -> Any:
    """A buy whose body goes out exactly as given, with ``headers`` (underscores for hyphens)."""
    sent = as_json(service.auth(user))
    sent.update({name.replace("_", "-"): value for name, value in headers.items()})
    return await raw_call(
        service, "POST", f"/v1/sales/{sale['sale_id']}/buy", data=data, headers=sent
    )


# -- content codings ---------------------------------------------------------------------------


async def test_compressed_bodies_are_decoded(service: Service) -> None:
    sale = await service.create_sale(stock=40, per_user_limit=2)
    cases: dict[str, tuple[str, bytes]] = {
        "gzip": ("gzip", gzip.compress(BODY)),
        "x-gzip": ("x-gzip", gzip.compress(BODY)),
        "upper case": ("GZIP", gzip.compress(BODY)),
        "deflate, zlib-wrapped": ("deflate", zlib.compress(BODY)),
        "deflate, raw": ("deflate", deflate_raw(BODY)),
        "identity": ("identity", BODY),
        "gzip then identity": ("gzip, identity", gzip.compress(BODY)),
        "deflate then gzip": ("deflate, gzip", gzip.compress(zlib.compress(BODY))),
        "gzip then deflate": ("gzip,deflate", zlib.compress(gzip.compress(BODY))),
    }
    for i, (label, (coding, data)) in enumerate(cases.items()):
        reply = await buy_with(service, sale, f"u{i}", data, Content_Encoding=coding)
        assert reply.status == 201, (label, reply.body)
        assert reply.body["order"]["quantity"] == 2, label
    # two header lines are one list (RFC 9110, 5.3): deflate applied first, then gzip
    headers = CIMultiDict(as_json(service.auth("two-lines")))
    headers.add("Content-Encoding", "deflate")
    headers.add("Content-Encoding", "gzip")
    reply = await raw_call(
        service, "POST", f"/v1/sales/{sale['sale_id']}/buy",
        data=gzip.compress(zlib.compress(BODY)), headers=headers,
    )  # fmt: skip
    assert reply.status == 201, reply.body
    assert (await service.stats(sale["sale_id"]))["reserved"] == 2 * (len(cases) + 1)

    # the admin routes read compressed bodies too, within their own (larger) limit
    spec = sale_spec(name="n" * 200, stock=3)
    reply = await raw_call(
        service, "POST", "/v1/admin/sales", data=gzip.compress(orjson.dumps(spec)),
        headers={**as_json(service.admin_headers), "Content-Encoding": "gzip"},
    )  # fmt: skip
    assert reply.status == 201, reply.body
    assert reply.body["sale"]["stock"] == 3


async def test_garbled_compressed_bodies_are_400_and_change_nothing(service: Service) -> None:
    """aiohttp took a gzip stream cut short for a whole one: a body of nothing but a gzip
    header read as ``{}`` and bought a unit."""
    sale = await service.create_sale(stock=5, per_user_limit=2)
    whole = gzip.compress(BODY)
    flipped = bytearray(whole)
    flipped[-6] ^= 0xFF  # the CRC no longer matches
    cases: dict[str, tuple[str, bytes]] = {
        "a gzip header and nothing else": ("gzip", whole[:10]),
        "gzip without its trailer": ("gzip", whole[:-8]),
        "gzip cut in the middle": ("gzip", whole[: len(whole) // 2]),
        "gzip with bytes after its end": ("gzip", whole + b"{}"),
        "two gzip streams": ("gzip", whole + whole),
        "gzip with a bad check sum": ("gzip", bytes(flipped)),
        "an empty gzip body": ("gzip", b""),
        "plain JSON called gzip": ("gzip", BODY),
        "deflate cut short": ("deflate", zlib.compress(BODY)[:-4]),
        "raw deflate cut short": ("deflate", deflate_raw(BODY)[:-3]),
        "deflate with bytes after its end": ("deflate", zlib.compress(BODY) + b" "),
        "an empty deflate body": ("deflate", b""),
        "gzip inside, but not deflate outside": ("gzip, deflate", whole),
        "x-gzip cut short": ("x-gzip", whole[:12]),
    }
    for label, (coding, data) in cases.items():
        reply = await buy_with(service, sale, "alice", data, Content_Encoding=coding)
        assert_error(reply, 400, "invalid_request", label)
        assert reply.headers.get("Connection", "").lower() == "close", (label, reply.headers)
    await assert_untouched(service, sale)


async def test_compression_bombs_are_413(service: Service) -> None:
    """A small body that decodes to more than the route allows is refused once it passes the
    limit: it is never expanded whole."""
    sale = await service.create_sale(stock=5, per_user_limit=2)
    spaces = b"{}" + b" " * 2_000_000
    for coding, data in [("gzip", gzip.compress(spaces, 9)), ("deflate", zlib.compress(spaces, 9))]:
        assert len(data) < service.settings.max_body_bytes, len(data)
        reply = await buy_with(service, sale, "alice", data, Content_Encoding=coding)
        assert_error(reply, 413, "body_too_large", coding)
    # a body at the limit once decoded is fine
    at_limit = BODY + b" " * (service.settings.max_body_bytes - len(BODY))
    reply = await buy_with(service, sale, "bob", gzip.compress(at_limit), Content_Encoding="gzip")
    assert reply.status == 201, reply.body
    one_over = gzip.compress(at_limit + b" ")
    reply = await buy_with(service, sale, "carol", one_over, Content_Encoding="gzip")
    assert_error(reply, 413, "body_too_large", "one byte over")

    # the admin limit (1 MiB) holds for decoded bodies too
    name = b"n" * 30_000_000
    bomb = gzip.compress(orjson.dumps(sale_spec())[:-1] + b', "x": "' + name + b'"}', 9)
    assert len(bomb) < service.settings.admin_max_body_bytes
    started = time.monotonic()
    reply = await raw_call(
        service, "POST", "/v1/admin/sales", data=bomb,
        headers={**as_json(service.admin_headers), "Content-Encoding": "gzip"},
    )  # fmt: skip
    assert_error(reply, 413, "body_too_large", "admin")
    assert time.monotonic() - started < 2
    stats = await service.stats(sale["sale_id"])
    assert (stats["reserved"], stats["available"]) == (2, 3)


async def test_codings_the_service_does_not_read_are_415(service: Service) -> None:
    sale = await service.create_sale(stock=5)
    try:
        import brotli  # an optional extra of aiohttp, which decoded it: not one of ours

        br = brotli.compress(BODY)
    except ImportError:
        br = b"\x0b\x01\x80{}\x03"
    for coding, data in [
        ("br", br),
        ("gzip, br", br),
        ("zstd", b"(\xb5/\xfd\x00X\x11\x00\x00{}"),
        ("compress", BODY),
        ("bogus", BODY),
        ("gzip, gzip, gzip", gzip.compress(gzip.compress(gzip.compress(BODY)))),
    ]:
        reply = await buy_with(service, sale, "alice", data, Content_Encoding=coding)
        assert_error(reply, 415, "unsupported_media_type", coding)
        assert reply.headers.get("Accept-Encoding") == "gzip, deflate", reply.headers
    await assert_untouched(service, sale)


# -- media types -------------------------------------------------------------------------------


async def test_bodies_that_do_not_say_json_are_415(service: Service) -> None:
    """A form, plain text, XML or bytes are not read as JSON, whatever they hold: a browser
    form can post those to any site without asking."""
    sale = await service.create_sale(stock=5)
    order_id = (await service.buy(sale["sale_id"], "alice")).body["order"]["order_id"]
    for content_type in [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "application/xml",
        "text/json",
        "application/jsonx",
        "application/json; charset=latin-1",
        "application/json; charset=utf-16",
        "",
    ]:
        headers = {**service.auth("bob"), "Content-Type": content_type}
        for path, body in [
            (f"/v1/sales/{sale['sale_id']}/buy", b"{}"),
            (f"/v1/sales/{sale['sale_id']}/buy", b'{"quantity": 1}'),
            (f"/v1/orders/{order_id}/cancel", b"{}"),
        ]:
            reply = await raw_call(service, "POST", path, data=body, headers=headers)
            assert_error(reply, 415, "unsupported_media_type", (content_type, path))
        admin = {**service.admin_headers, "Content-Type": content_type}
        spec = sale_spec(sale_id=f"typed-{sale['sale_id'][-8:]}")
        reply = await raw_call(
            service, "POST", "/v1/admin/sales", data=orjson.dumps(spec), headers=admin
        )
        assert_error(reply, 415, "unsupported_media_type", (content_type, "admin"))
    assert (await service.call("GET", f"/v1/sales/{spec['sale_id']}")).status == 404
    stats = await service.stats(sale["sale_id"])
    assert (stats["reserved"], stats["cancelled"], stats["available"]) == (1, 0, 4)


async def test_json_media_types_and_bodiless_requests_are_read(service: Service) -> None:
    sale = await service.create_sale(stock=20)
    path = f"/v1/sales/{sale['sale_id']}/buy"
    for i, content_type in enumerate([
        None,
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON; Charset=UTF-8",
        "application/merge-patch+json",
        "application/vnd.flashsale.buy+json; charset=utf-8",
    ]):  # fmt: skip
        headers = service.auth(f"u{i}")
        if content_type is not None:
            headers["Content-Type"] = content_type
        reply = await raw_call(
            service, "POST", path, data=b'{"quantity": 1}', headers=headers,
            skip_auto_headers=["Content-Type"],
        )  # fmt: skip
        assert reply.status == 201, (content_type, reply.body)
    # with no body there is nothing to misread: the type does not matter
    headers = {**service.auth("no-body"), "Content-Type": "text/plain"}
    reply = await raw_call(service, "POST", path, headers=headers)
    assert reply.status == 201, reply.body
    order_id = reply.body["order"]["order_id"]
    reply = await raw_call(service, "POST", f"/v1/orders/{order_id}/cancel", headers=headers)
    assert reply.status == 200, reply.body


# -- the JSON text -----------------------------------------------------------------------------


async def test_repeated_keys_are_400(service: Service) -> None:
    """``{"quantity": 1, "quantity": 2}`` means 1 to one parser and 2 to another: refused."""
    sale = await service.create_sale(stock=5, per_user_limit=2)
    for body in [
        b'{"quantity": 1, "quantity": 2}',
        b'{"quantity": 2, "quantity": 1}',
        b'{"quantity": 1, "quantity": 1}',
        b'{"fcode": "A", "quantity": 1, "fcode": "B"}',
        b'{"quantity": 1, "\\u0071uantity": 2}',  # the same key, spelt with an escape
    ]:
        reply = await buy_with(service, sale, "alice", body)
        assert_error(reply, 400, "invalid_request", body)
        assert "repeats the key" in reply.body["message"], reply.body
    await assert_untouched(service, sale)

    spec = sale_spec(sale_id=f"twice-{sale['sale_id'][-8:]}", stock=3)
    text = orjson.dumps(spec)
    twice = text[:-1] + b', "stock": 3000}'
    reply = await raw_call(
        service, "POST", "/v1/admin/sales", data=twice, headers=as_json(service.admin_headers)
    )
    assert_error(reply, 400, "invalid_request", "admin")
    assert (await service.call("GET", f"/v1/sales/{spec['sale_id']}")).status == 404
    # colons in strings (times) and no repeat: read as it is
    reply = await raw_call(
        service, "POST", "/v1/admin/sales", data=text, headers=as_json(service.admin_headers)
    )
    assert reply.status == 201, reply.body
    assert reply.body["sale"]["stock"] == 3


async def test_bodies_that_are_not_utf8_json_are_400_and_say_why(service: Service) -> None:
    sale = await service.create_sale(stock=5)
    for body, why in [
        (b"\xef\xbb\xbf{}", "byte order mark"),
        (b'\xef\xbb\xbf{"quantity": 1}', "byte order mark"),
        (b'{"fcode": "\xff"}', "UTF-8"),
        (b'{"fcode": "caf\xe9"}', "UTF-8"),
        ("{}".encode("utf-16"), "UTF-8"),
        (b"\x0b", "not valid JSON"),
        (b"\x0c{}", "not valid JSON"),
        (b"{}\x00", "not valid JSON"),
    ]:
        reply = await buy_with(service, sale, "alice", body)
        assert_error(reply, 400, "invalid_request", body)
        assert why in reply.body["message"], (body, reply.body)
    await assert_untouched(service, sale)
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000  # deep enough for Python's json, not orjson
    reply = await raw_call(
        service, "POST", "/v1/admin/sales", data=deep, headers=as_json(service.admin_headers)
    )
    assert_error(reply, 400, "invalid_request", "deep")


# -- bodies and headers where they do not belong -----------------------------------------------


async def test_a_get_with_a_body_is_400(service: Service) -> None:
    sale = await service.create_sale(stock=5)
    order_id = (await service.buy(sale["sale_id"], "alice")).body["order"]["order_id"]
    alice = as_json(service.auth("alice"))
    for path, headers in [
        (f"/v1/sales/{sale['sale_id']}", alice),
        (f"/v1/orders/{order_id}", alice),
        (f"/v1/sales/{sale['sale_id']}/bookings/me", alice),
        (f"/v1/admin/sales/{sale['sale_id']}/stats", as_json(service.admin_headers)),
        ("/healthz", alice),
    ]:
        for method in ("GET", "HEAD"):
            reply = await raw_call(service, method, path, data=b"{}", headers=headers)
            if method == "HEAD":  # no body in the answer, but the status says it
                assert reply.status == 400, (method, path, reply)
            else:
                assert_error(reply, 400, "invalid_request", (method, path))
        # an empty body is no body
        reply = await raw_call(service, "GET", path, data=b"", headers=headers)
        assert reply.status < 400 or reply.body["error"] != "invalid_request", (path, reply)
    stats = await service.stats(sale["sale_id"])
    assert (stats["reserved"], stats["available"]) == (1, 4)


async def test_a_repeated_idempotency_key_header_is_400(service: Service) -> None:
    """Two keys in one request: which one a proxy or a retry would keep is anyone's guess."""
    sale = await service.create_sale(stock=5)
    for first, second in [("key-a", "key-b"), ("key-a", "key-a")]:
        headers = CIMultiDict(as_json(service.auth("alice")))
        headers.add("Idempotency-Key", first)
        headers.add("Idempotency-Key", second)
        reply = await raw_call(
            service, "POST", f"/v1/sales/{sale['sale_id']}/buy", data=b"{}", headers=headers
        )
        assert_error(reply, 400, "invalid_request", (first, second))
    await assert_untouched(service, sale)
    assert (await service.buy(sale["sale_id"], "alice", key="key-a")).status == 201


# -- what aiohttp's parser refuses -------------------------------------------------------------


async def exchange(port: int, request: bytes) -> bytes:
    """Send raw bytes; everything the server answers until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def malformed_requests(sale_id: str, admin_token: str, jwt: str) -> dict[str, tuple[bytes, int]]:
    """Requests aiohttp's parser refuses, each quoting a token where the parser's message
    would: label -> (bytes, the status expected)."""
    buy = f"POST /v1/sales/{sale_id}/buy HTTP/1.1\r\nHost: shop\r\n".encode()
    admin, shopper = admin_token.encode(), jwt.encode()
    body = b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    return {
        "an admin token in a header over 8190 bytes": (
            buy + b"Authorization: Bearer " + admin + b"x" * 9000 + b"\r\n" + body, 431),
        "a shopper token in a header over 8190 bytes": (
            buy + b"Authorization: Bearer " + shopper + b"=" * 9000 + b"\r\n" + body, 431),
        "a control character after a token": (
            buy + b"Authorization: Bearer " + shopper + b"\x01\r\n" + body, 400),
        "a NUL in a token": (buy + b"Authorization: Bearer " + admin + b"\x00x\r\n" + body, 400),
        "a bad character in a header name": (
            buy + b"Author(zation: Bearer " + shopper + b"\r\n" + body, 400),
        "a token in a request line over 4096 bytes": (
            f"GET /v1/sales/{jwt}{'a' * 5000} HTTP/1.1\r\nHost: shop\r\n\r\n".encode(), 400),
        "a bad method": (f"G\x01T /?t={jwt} HTTP/1.1\r\nHost: shop\r\n\r\n".encode(), 400),
        "not HTTP at all": (b"\x16\x03\x01\x02\x00" + shopper + b"\r\n\r\n", 400),
        "a token as a chunk size": (
            buy + b"Authorization: Bearer " + shopper + b"\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + shopper + b"\r\n{}\r\n0\r\n\r\n", 400),
        "two Content-Length headers": (
            buy + b"Authorization: Bearer " + shopper + b"\r\nContent-Length: 2\r\n" + body, 400),
    }  # fmt: skip


def logged_text(records: list[logging.LogRecord]) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(record) for record in records)


async def test_parser_errors_are_json_and_quote_no_token(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sale = await service.create_sale(stock=5)
    admin_token = service.settings.admin_token
    jwt = issue_token(service.settings.token_secret, "alice", 3600)
    port = service.client.server.port
    assert port is not None
    for label, (request, status) in malformed_requests(sale["sale_id"], admin_token, jwt).items():
        raw = await exchange(port, request)  # read to the end: the connection was closed
        assert admin_token.encode() not in raw, label
        assert jwt.encode() not in raw, label
        got, headers, body = parse_answer(raw)
        assert got == status, (label, raw[:300])
        assert headers["content-type"].startswith("application/json"), (label, headers)
        error = orjson.loads(body)
        assert set(error) == {"error", "message"}, (label, error)
        assert error["error"] == ("headers_too_large" if status == 431 else "invalid_request")
    await assert_untouched(service, sale)

    logged = logged_text(caplog.records)
    assert admin_token not in logged
    assert jwt not in logged
    assert jwt[:40] not in logged  # not even the start aiohttp's message would have quoted
    # aiohttp logs nothing but its access lines (which serve turns off)
    assert not [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno > 20]
    ours = [r for r in caplog.records if "malformed HTTP request" in r.getMessage()]
    assert ours, logged
    assert ours[0].getMessage() == "malformed HTTP request from 127.0.0.1: LineTooLong"
    assert all(r.exc_info is None and r.levelno == logging.WARNING for r in ours), logged


async def test_a_flood_of_malformed_requests_is_logged_in_a_few_lines(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = service.client.server.port
    assert port is not None
    bad = b"GET /healthz HTTP/1.1\r\nHost: shop\r\nX-Junk: \x01\r\n\r\n"
    started = time.monotonic()
    answers = [await exchange(port, bad) for _ in range(200)]
    took_s = time.monotonic() - started
    assert all(parse_answer(raw)[0] == 400 for raw in answers)
    lines = [r.getMessage() for r in caplog.records if "malformed HTTP request" in r.getMessage()]
    assert 1 <= len(lines) <= took_s + 1, (took_s, lines)  # one a second at most
    assert not [r for r in caplog.records if r.name.startswith("aiohttp") and r.levelno > 20]
    await asyncio.sleep(1.1)
    assert parse_answer(await exchange(port, bad))[0] == 400
    lines = [r.getMessage() for r in caplog.records if "malformed HTTP request" in r.getMessage()]
    # every one of the 201 is in the log: written, or counted in a later line
    counted = sum(int(m.group(1)) for line in lines if (m := re.search(r"and (\d+) more", line)))
    assert len(lines) + counted == 201, lines


async def test_serve_answers_parser_errors_in_json_and_logs_no_token(settings: Settings) -> None:
    """The same under ``flashsale serve``: the answers, and its log (stderr)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flashsale", "serve", "--single-process", "--port", str(port),
        env=flashsale_env(settings),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    jwt = issue_token(settings.token_secret, "alice", 3600)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                raw = await exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")
                if parse_answer(raw)[0] == 200:
                    break
            except (OSError, IndexError):
                pass
            assert time.monotonic() < deadline, "serve did not start"
            await asyncio.sleep(0.1)
        requests = malformed_requests("no-such-sale", settings.admin_token, jwt)
        for label, (request, status) in requests.items():
            raw = await exchange(port, request)
            got, headers, _ = parse_answer(raw)
            assert got == status, (label, raw[:300])
            assert headers["content-type"].startswith("application/json"), label
            assert settings.admin_token.encode() not in raw, label
            assert jwt.encode() not in raw, label
        flood = requests["an admin token in a header over 8190 bytes"][0]
        started = time.monotonic()
        for _ in range(200):
            assert parse_answer(await exchange(port, flood))[0] == 431
        took_s = time.monotonic() - started
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    log = err.decode(errors="replace")
    assert settings.admin_token not in log
    assert jwt not in log
    assert jwt[:40] not in log
    assert "Traceback" not in log, log[-3000:]
    malformed = [line for line in log.splitlines() if "malformed HTTP request" in line]
    # one for the first ones, then at most one a second
    assert 1 <= len(malformed) <= took_s + 3, (took_s, log[-3000:])
