"""Bad input against the real service: every refusal is a JSON ``{"error", "message"}`` with the
documented status and code, and a refused request changes nothing. Identity rules are in
``test_auth.py``."""

from __future__ import annotations

import asyncio
import io
import re
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import orjson

from tests.helpers import Reply, Service, sale_spec


def assert_error(reply: Reply, status: int, code: str, what: object = "") -> None:
    assert (reply.status, reply.body.get("error")) == (status, code), (what, reply.body)
    assert set(reply.body) == {"error", "message"}, what
    assert isinstance(reply.body["message"], str), what
    assert reply.body["message"], what
    assert reply.headers["Content-Type"].startswith("application/json"), what


async def raw_call(service: Service, method: str, path: str, **kwargs: Any) -> Reply:
    """Like ``Service.call``, but a body that is not JSON is kept as text, not raised on."""
    async with service.client.request(method, path, **kwargs) as resp:
        raw = await resp.read()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = {"_text": raw.decode(errors="replace")}
        return Reply(resp.status, body, dict(resp.headers))


def as_json(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` for a body given as bytes, which aiohttp would send as
    application/octet-stream (refused with 415: see test_http_parsing.py)."""
    return {**headers, "Content-Type": "application/json"}


async def assert_untouched(service: Service, sale: dict[str, Any]) -> None:
    view = await service.call("GET", f"/v1/sales/{sale['sale_id']}")
    assert view.body["sale"]["available"] == sale["stock"]
    stats = await service.stats(sale["sale_id"])
    assert (stats["available"], stats["reserved"], stats["paid"]) == (sale["stock"], 0, 0)
    assert stats["orders_in_postgres"]["total"] == 0


def unique_id(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"  # PostgreSQL is shared by the whole run


def iso_in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


# -- buy ---------------------------------------------------------------------------------------

BAD_BUY_BODIES: dict[str, bytes] = {
    "malformed JSON": b'{"quantity": 1',
    "not JSON at all": b"quantity=1",
    "trailing garbage": b'{"quantity": 1} x',
    "a list": b"[1]",
    "an empty list": b"[]",
    "a string": b'"quantity"',
    "a number": b"1",
    "null": b"null",
    "unknown field": b'{"quantity": 1, "coupon": "FREE"}',
    "only an unknown field": b'{"qty": 1}',
    "quantity as string": b'{"quantity": "1"}',
    "quantity as float": b'{"quantity": 1.0}',
    "quantity as fraction": b'{"quantity": 1.5}',
    "quantity true": b'{"quantity": true}',
    "quantity false": b'{"quantity": false}',
    "quantity null": b'{"quantity": null}',
    "quantity object": b'{"quantity": {"n": 1}}',
    "quantity 0": b'{"quantity": 0}',
    "quantity negative": b'{"quantity": -1}',
    "quantity 1001": b'{"quantity": 1001}',
    "quantity beyond 64 bits": b'{"quantity": 100000000000000000000000}',
    "quantity above per_user_limit": b'{"quantity": 3}',
}


async def test_bad_buy_bodies_are_400_and_change_nothing(service: Service) -> None:
    sale = await service.create_sale(stock=5, per_user_limit=2)
    path = f"/v1/sales/{sale['sale_id']}/buy"
    for label, body in BAD_BUY_BODIES.items():
        reply = await service.call("POST", path, data=body, headers=as_json(service.auth("alice")))
        assert_error(reply, 400, "invalid_request", label)
    await assert_untouched(service, sale)
    # alice holds nothing after all that: she may still buy the full limit
    assert (await service.buy(sale["sale_id"], "alice", {"quantity": 2})).status == 201


async def test_empty_body_buys_one_unit(service: Service) -> None:
    sale = await service.create_sale(stock=5, per_user_limit=3)
    path = f"/v1/sales/{sale['sale_id']}/buy"
    for body in (None, b"", b"  \n", b"{}"):
        reply = await service.call(
            "POST", path, data=body, headers=as_json(service.auth(f"u{body!r}"))
        )
        assert reply.status == 201, (body, reply.body)
        assert reply.body["order"]["quantity"] == 1
    assert (await service.stats(sale["sale_id"]))["reserved"] == 4


async def test_oversized_buy_bodies_are_413(service: Service) -> None:
    sale = await service.create_sale(stock=5, per_user_limit=2)
    path = f"/v1/sales/{sale['sale_id']}/buy"
    big = b'{"quantity": 1}' + b" " * 4082  # 4097 bytes of otherwise valid JSON
    reply = await service.call("POST", path, data=big, headers=as_json(service.auth("alice")))
    assert_error(reply, 413, "body_too_large", "with Content-Length")

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"quantity": 1}'
        for _ in range(5):
            yield b" " * 1000

    bob = as_json(service.auth("bob"))
    async with service.client.post(path, data=chunks(), headers=bob) as resp:
        assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in resp.request_info.headers
        reply = Reply(resp.status, await resp.json(), dict(resp.headers))
    assert_error(reply, 413, "body_too_large", "chunked")
    for action in ("cancel",):
        reply = await service.call(
            "POST", f"/v1/orders/{sale['sale_id']}.{'0' * 26}/{action}", data=big,
            headers=as_json(service.auth("alice")),
        )  # fmt: skip
        assert_error(reply, 413, "body_too_large", action)
    await assert_untouched(service, sale)
    # exactly the limit is fine
    reply = await service.call(
        "POST", path, data=big[:4096], headers=as_json(service.auth("carol"))
    )
    assert reply.status == 201, reply.body


async def test_unknown_or_malformed_sale_ids_are_404(service: Service) -> None:
    await service.create_sale(sale_id=unique_id("real"))
    for sale_id in [
        "no-such-sale", "Upper-Case", "under_score", "dot.ted", "-leading", "trailing-",
        "x" * 65, "caf%C3%A9", "semi%3Bcolon", "sp%20ace", "new-line%0A", "nul%00",
    ]:  # fmt: skip
        buy = await service.call(
            "POST", f"/v1/sales/{sale_id}/buy", json={}, headers=service.auth("alice")
        )
        assert_error(buy, 404, "sale_not_found", f"buy {sale_id}")
        view = await service.call("GET", f"/v1/sales/{sale_id}")
        assert_error(view, 404, "sale_not_found", f"view {sale_id}")
        for action in ("pause", "resume", "close", "stats"):
            method = "GET" if action == "stats" else "POST"
            reply = await service.call(
                method, f"/v1/admin/sales/{sale_id}/{action}", headers=service.admin_headers
            )
            assert_error(reply, 404, "sale_not_found", f"{action} {sale_id}")


async def test_bad_idempotency_keys_are_400(service: Service) -> None:
    sale = await service.create_sale(stock=5, per_user_limit=2)
    for key in ["", " ", "a b", "tab\there", "café", "ключ", "x" * 256]:
        reply = await service.buy(sale["sale_id"], "alice", {"quantity": 1}, key=key)
        assert_error(reply, 400, "invalid_request", repr(key))
    await assert_untouched(service, sale)
    # the longest allowed key, of every visible ASCII character, works and replays
    key = ("".join(chr(c) for c in range(0x21, 0x7F)) * 3)[:255]
    first = await service.buy(sale["sale_id"], "alice", {"quantity": 1}, key=key)
    again = await service.buy(sale["sale_id"], "alice", {"quantity": 1}, key=key)
    assert (first.status, again.status) == (201, 201), (first.body, again.body)
    assert again.body["order"]["order_id"] == first.body["order"]["order_id"]
    assert again.headers.get("Idempotent-Replayed") == "true"


async def test_a_mixed_batch_of_refusals_changes_nothing(service: Service) -> None:
    sale = await service.create_sale(stock=3, per_user_limit=1)
    path = f"/v1/sales/{sale['sale_id']}/buy"
    alice = as_json(service.auth("alice"))
    requests: list[dict[str, Any]] = [
        {"data": body, "headers": alice} for body in BAD_BUY_BODIES.values()
    ]
    requests += [
        {"json": {"quantity": 2}, "headers": alice},  # above per_user_limit 1
        {"json": {}, "headers": {**alice, "Idempotency-Key": "bad key"}},
        {"data": b"{}" + b" " * 5000, "headers": alice},
        {"json": {}, "headers": {}},
        {"json": {}, "headers": {"Authorization": "Bearer junk"}},
        {"json": {}, "headers": service.admin_headers},
    ]
    replies = await asyncio.gather(*(service.call("POST", path, **r) for r in requests))
    assert all(400 <= r.status < 500 for r in replies), [(r.status, r.body) for r in replies]
    await assert_untouched(service, sale)
    assert (await service.buy(sale["sale_id"], "alice")).status == 201


# -- sale states -------------------------------------------------------------------------------


async def status_of(service: Service, sale_id: str) -> str:
    reply = await service.call("GET", f"/v1/sales/{sale_id}")
    assert reply.status == 200, reply.body
    status: str = reply.body["sale"]["status"]
    return status


async def test_a_scheduled_sale_is_not_open(service: Service) -> None:
    sale = await service.create_sale(starts_at=iso_in(3600), ends_at=iso_in(7200))
    assert sale["status"] == "scheduled"
    assert await status_of(service, sale["sale_id"]) == "scheduled"
    assert_error(await service.buy(sale["sale_id"], "alice"), 409, "sale_not_open")
    await assert_untouched(service, sale)


async def test_pause_and_resume(service: Service) -> None:
    sale = await service.create_sale(stock=5)
    sid, admin = sale["sale_id"], service.admin_headers
    paused = await service.call("POST", f"/v1/admin/sales/{sid}/pause", headers=admin)
    assert paused.status == 200, paused.body
    assert (paused.body["sale"]["status"], paused.body["sale"]["control"]) == ("paused", "paused")
    assert "state" not in paused.body["sale"]  # one word for where a sale stands: status
    assert await status_of(service, sid) == "paused"
    refused = await service.buy(sid, "alice")
    assert_error(refused, 409, "sale_paused")  # not sale_not_open: it has started
    assert refused.headers["Retry-After"] == "5"
    await assert_untouched(service, sale)
    resumed = await service.call("POST", f"/v1/admin/sales/{sid}/resume", headers=admin)
    assert resumed.status == 200, resumed.body
    assert await status_of(service, sid) == "open"
    assert (await service.buy(sid, "alice")).status == 201


async def test_a_sold_out_sale(service: Service) -> None:
    sale = await service.create_sale(stock=1)
    assert (await service.buy(sale["sale_id"], "alice")).status == 201
    assert await status_of(service, sale["sale_id"]) == "sold_out"
    assert_error(await service.buy(sale["sale_id"], "bob"), 409, "sold_out")


async def test_a_sale_past_its_end_is_gone(service: Service) -> None:
    ends = datetime.now(UTC) + timedelta(seconds=0.8)
    sale = await service.create_sale(stock=5, ends_at=ends.isoformat())
    assert await status_of(service, sale["sale_id"]) == "open"
    await asyncio.sleep(ends.timestamp() - time.time() + 0.1)
    assert await status_of(service, sale["sale_id"]) == "ended"
    assert_error(await service.buy(sale["sale_id"], "alice"), 410, "sale_ended")
    await assert_untouched(service, sale)


async def test_a_closed_sale_is_gone_for_good(service: Service) -> None:
    sale = await service.create_sale(stock=5)
    sid, admin = sale["sale_id"], service.admin_headers
    closed = await service.call("POST", f"/v1/admin/sales/{sid}/close", headers=admin)
    assert closed.status == 200, closed.body
    assert (closed.body["sale"]["status"], closed.body["sale"]["control"]) == ("ended", "closed")
    assert await status_of(service, sid) == "ended"
    assert_error(await service.buy(sid, "alice"), 410, "sale_ended")
    for action in ("pause", "resume"):
        reply = await service.call("POST", f"/v1/admin/sales/{sid}/{action}", headers=admin)
        assert_error(reply, 410, "sale_ended", action)
    assert await status_of(service, sid) == "ended"
    await assert_untouched(service, sale)


async def test_limit_reached(service: Service) -> None:
    sale = await service.create_sale(stock=5, per_user_limit=1)
    assert (await service.buy(sale["sale_id"], "alice")).status == 201
    assert_error(await service.buy(sale["sale_id"], "alice"), 409, "limit_reached")
    assert (await service.buy(sale["sale_id"], "bob")).status == 201
    assert (await service.stats(sale["sale_id"]))["reserved"] == 2

    roomy = await service.create_sale(stock=5, per_user_limit=2)
    assert (await service.buy(roomy["sale_id"], "alice")).status == 201
    reply = await service.buy(roomy["sale_id"], "alice", {"quantity": 2})
    assert_error(reply, 409, "limit_reached", "1 held + 2 asked > 2")
    assert (await service.stats(roomy["sale_id"]))["reserved"] == 1


# -- create sale -------------------------------------------------------------------------------


def bad_sale_specs() -> dict[str, dict[str, Any]]:
    """Definitions the create endpoint must refuse with 400, each a fresh ``sale_id``."""
    specs: dict[str, dict[str, Any]] = {}
    for field in ("sku", "name", "price_cents", "stock", "starts_at", "ends_at"):
        spec = sale_spec()
        del spec[field]
        specs[f"no {field}"] = spec
    now = datetime.now(UTC)
    in_1h = (now + timedelta(hours=1)).isoformat()
    for label, fields in {
        "unknown field": {"colour": "red"},
        "sale_id a number": {"sale_id": 42},
        "sale_id empty": {"sale_id": ""},
        "sale_id upper case": {"sale_id": "Sale-1"},
        "sale_id underscore": {"sale_id": "sale_1"},
        "sale_id 65 chars": {"sale_id": "s" * 65},
        "sale_id leading hyphen": {"sale_id": "-sale"},
        "sale_id trailing hyphen": {"sale_id": "sale-"},
        "sale_id with a dot": {"sale_id": "sale.1"},
        "sale_id with a trailing newline": {"sale_id": unique_id("nl") + "\n"},
        "sku a number": {"sku": 7},
        "sku blank": {"sku": "   "},
        "sku 65 chars": {"sku": "k" * 65},
        "sku with NUL": {"sku": "mi\u00001"},
        "name null": {"name": None},
        "name with a newline": {"name": "Mi\n1"},
        "name with an escape": {"name": "\x1b[31mMi 1"},
        "name 201 chars": {"name": "n" * 201},
        "price_cents string": {"price_cents": "100"},
        "price_cents float": {"price_cents": 9.99},
        "price_cents negative": {"price_cents": -1},
        "price_cents bool": {"price_cents": True},
        "stock 0": {"stock": 0},
        "stock negative": {"stock": -5},
        "stock string": {"stock": "10"},
        "stock bool": {"stock": True},
        "stock over 100M": {"stock": 100_000_001},
        "per_user_limit 0": {"per_user_limit": 0},
        "per_user_limit 1001": {"per_user_limit": 1001},
        "per_user_limit bool": {"per_user_limit": True},
        "reservation_ttl_s 0": {"reservation_ttl_s": 0},
        "reservation_ttl_s over a day": {"reservation_ttl_s": 86_401},
        "starts_at a number": {"starts_at": int(now.timestamp())},
        "starts_at not a time": {"starts_at": "tomorrow"},
        "starts_at without offset": {"starts_at": now.replace(tzinfo=None).isoformat()},
        "ends_at without offset": {"ends_at": "2030-01-01T10:00:00"},
        "date only": {"ends_at": "2030-01-01"},
        "starts_at before 2000": {"starts_at": "1999-12-31T23:59:59+00:00"},
        "starts_at in year 0 UTC": {"starts_at": "0001-01-01T00:00:00+14:00"},
        "ends_at in 9999": {"ends_at": "9999-06-01T00:00:00+00:00"},
        "ends_at in year 10000 UTC": {"ends_at": "9999-12-31T23:59:59-14:00"},
        "ends_at equal to starts_at": {"starts_at": in_1h, "ends_at": in_1h},
        "ends_at before starts_at": {"ends_at": (now - timedelta(hours=1)).isoformat()},
    }.items():
        specs[label] = sale_spec(**fields)
    for spec in specs.values():
        spec.setdefault("sale_id", unique_id("bad"))
    return specs


async def test_bad_sale_definitions_are_400(service: Service) -> None:
    for label, spec in bad_sale_specs().items():
        reply = await service.call(
            "POST", "/v1/admin/sales", json=spec, headers=service.admin_headers
        )
        assert_error(reply, 400, "invalid_request", label)
        if isinstance(spec["sale_id"], str) and spec["sale_id"]:
            view = await service.call("GET", f"/v1/sales/{quote(spec['sale_id'], safe='')}")
            assert view.status == 404, (label, "a refused sale was created anyway")
    for label, body in {
        "malformed JSON": b'{"sku": ',
        "a list": orjson.dumps([sale_spec()]),
        "null": b"null",
        "empty body": b"",
    }.items():
        reply = await service.call(
            "POST", "/v1/admin/sales", data=body, headers=as_json(service.admin_headers)
        )
        assert_error(reply, 400, "invalid_request", label)
    huge = io.BytesIO(orjson.dumps(sale_spec(name="n" * (1 << 20))))  # over 1 MiB
    reply = await raw_call(
        service, "POST", "/v1/admin/sales", data=huge, headers=as_json(service.admin_headers)
    )
    assert_error(reply, 413, "body_too_large", "over admin_max_body_bytes")


async def test_created_sale_echoes_its_definition(service: Service) -> None:
    spec = sale_spec(stock=7)
    reply = await service.call("POST", "/v1/admin/sales", json=spec, headers=service.admin_headers)
    assert reply.status == 201, reply.body
    sale = reply.body["sale"]
    assert re.fullmatch(r"[a-z0-9-]{1,64}", sale["sale_id"]), sale["sale_id"]
    assert sale["stock"] == sale["available"] == 7
    assert (sale["per_user_limit"], sale["reservation_ttl_s"]) == (1, 900)
    assert (sale["status"], sale["control"]) == ("open", "active")
    assert (sale["sku"], sale["name"], sale["price_cents"]) == ("mi-1", "Mi 1", 199_900)
    assert (await service.call("GET", f"/v1/sales/{sale['sale_id']}")).status == 200

    other = await service.create_sale(
        sale_id=unique_id("given"), per_user_limit=3, reservation_ttl_s=60, starts_at=iso_in(60)
    )
    assert (other["per_user_limit"], other["reservation_ttl_s"]) == (3, 60)
    assert other["status"] == "scheduled"
    assert other["sale_id"] != sale["sale_id"]


async def test_duplicate_sale_ids_are_409(service: Service) -> None:
    spec = sale_spec(sale_id=unique_id("dup"), stock=5)
    admin = service.admin_headers
    assert (await service.call("POST", "/v1/admin/sales", json=spec, headers=admin)).status == 201
    for label, again in {
        "identical": spec,
        "other stock": {**spec, "stock": 500},
        "other price": {**spec, "price_cents": 1},
        "other times": {**spec, "ends_at": iso_in(7200)},
    }.items():
        reply = await service.call("POST", "/v1/admin/sales", json=again, headers=admin)
        assert_error(reply, 409, "sale_exists", label)
    stats = await service.stats(spec["sale_id"])
    assert (stats["stock"], stats["available"]) == (5, 5)


# -- orders and routes -------------------------------------------------------------------------


async def test_orders_of_others_do_not_exist(service: Service) -> None:
    sale = await service.create_sale(stock=5, per_user_limit=2)
    sid = sale["sale_id"]
    order_id = (await service.buy(sid, "alice")).body["order"]["order_id"]
    bob = service.auth("bob")
    for method, path in [
        ("GET", f"/v1/orders/{order_id}"),
        ("POST", f"/v1/orders/{order_id}/cancel"),
    ]:
        reply = await service.call(method, path, headers=bob)
        assert_error(reply, 404, "order_not_found", f"bob: {method} {path}")
        assert order_id not in str(reply.body)
        assert "alice" not in str(reply.body)
    # refused settlements with a bad body leave it alone too
    for body in (b'{"amount": 1}', b"[]", b"{"):
        for action in ("cancel",):
            path = f"/v1/orders/{order_id}/{action}"
            reply = await service.call(
                "POST", path, data=body, headers=as_json(service.auth("alice"))
            )
            assert_error(reply, 400, "invalid_request", f"{action} {body!r}")
    mine = await service.call("GET", f"/v1/orders/{order_id}", headers=service.auth("alice"))
    assert mine.body["order"]["status"] == "reserved"
    stats = await service.stats(sid)
    assert (stats["reserved"], stats["paid"], stats["cancelled"]) == (1, 0, 0)


async def test_made_up_and_malformed_order_ids_are_404(service: Service) -> None:
    sale = await service.create_sale(stock=5)
    sid = sale["sale_id"]
    await service.buy(sid, "alice")
    made_up = [f"{sid}.{'0' * 26}", f"{sid}.{'z' * 26}", f"no-such-sale.{'1' * 26}"]
    malformed = [
        "nope", sid, f"{sid}.", f".{'0' * 26}", f"{sid}.{'0' * 25}", f"{sid}.{'0' * 27}",
        f"{sid}.{'A' * 26}", f"{sid}.{'0' * 13}-{'0' * 12}", f"Upper.{'0' * 26}",
        f"-x.{'0' * 26}", f"{sid}.{'0' * 26}%0A", "%20", "..%2E",
    ]  # fmt: skip
    alice = service.auth("alice")
    for order_id in made_up + malformed:
        for method, suffix in [("GET", ""), ("POST", "/cancel")]:
            reply = await service.call(method, f"/v1/orders/{order_id}{suffix}", headers=alice)
            assert_error(reply, 404, "order_not_found", f"{method} {order_id}{suffix}")
    assert (await service.stats(sid))["reserved"] == 1


async def test_unknown_routes_and_wrong_methods(service: Service) -> None:
    sale = await service.create_sale()
    sid = sale["sale_id"]
    for method, path in [
        ("GET", "/"), ("GET", "/v1"), ("GET", "/v1/sales"), ("POST", f"/v1/sales/{sid}/refund"),
        ("GET", f"/v1/sales/{sid}/buy/now"), ("GET", "/v1/orders"), ("POST", "/v2/admin/sales"),
    ]:  # fmt: skip
        reply = await service.call(method, path, headers=service.auth("alice"))
        assert_error(reply, 404, "not_found", f"{method} {path}")
    for method, path, allowed in [
        ("GET", f"/v1/sales/{sid}/buy", "POST"),
        ("PUT", f"/v1/sales/{sid}/buy", "POST"),
        ("DELETE", f"/v1/sales/{sid}", "GET"),
        ("PUT", "/v1/admin/sales", "POST"),
        ("POST", f"/v1/admin/sales/{sid}", "PATCH"),
        ("GET", f"/v1/orders/{sid}.{'0' * 26}/pay", "POST"),
        ("POST", f"/v1/admin/sales/{sid}/stats", "GET"),
    ]:
        reply = await service.call(method, path, headers=service.auth("alice"))
        assert_error(reply, 405, "method_not_allowed", f"{method} {path}")
        assert allowed in reply.headers.get("Allow", ""), (method, path, reply.headers)
    await assert_untouched(service, sale)


async def test_undecodable_body_is_400_and_closes_the_connection(service: Service) -> None:
    """A body that does not match its Content-Encoding cannot be read: 400, and the connection
    is closed, as after any body that cannot be read (more in test_http_parsing.py)."""
    sale = await service.create_sale()
    headers = {**as_json(service.auth("alice")), "Content-Encoding": "gzip"}
    reply = await raw_call(
        service, "POST", f"/v1/sales/{sale['sale_id']}/buy", data=b"{}", headers=headers
    )
    assert_error(reply, 400, "invalid_request")
    assert reply.headers.get("Connection", "").lower() == "close", reply.headers
    await assert_untouched(service, sale)


async def test_garbled_deflate_body_is_a_json_400(service: Service) -> None:
    sale = await service.create_sale()
    headers = {**as_json(service.auth("alice")), "Content-Encoding": "deflate"}
    reply = await raw_call(
        service, "POST", f"/v1/sales/{sale['sale_id']}/buy", data=b"{}", headers=headers
    )
    await assert_untouched(service, sale)
    assert_error(reply, 400, "invalid_request")
    assert reply.headers.get("Connection", "").lower() == "close", reply.headers


async def test_oversized_header_is_a_json_431(service: Service) -> None:
    """Refused by aiohttp's HTTP parser, before any handler runs: answered all the same (the
    parser's refusals are in test_http_parsing.py)."""
    sale = await service.create_sale()
    headers = {"Authorization": "Bearer " + "x" * 9000}
    reply = await raw_call(
        service, "POST", f"/v1/sales/{sale['sale_id']}/buy", json={}, headers=headers
    )
    await assert_untouched(service, sale)
    assert_error(reply, 431, "headers_too_large")
