"""Identity rules: who may buy (an HS256 shopper JWT, nothing else) and who may run sales (the
admin token, nothing else). Every refusal is 401 ``unauthorized`` with ``WWW-Authenticate``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from flashsale.auth import issue_token
from tests.helpers import Reply, Service, sale_spec

OTHER_SECRET = "another-secret-of-at-least-32-bytes-0123456789"


def assert_unauthorized(reply: Reply, what: str = "") -> None:
    assert reply.status == 401, (what, reply.status, reply.body)
    assert reply.body == {"error": "unauthorized", "message": reply.body["message"]}, what
    assert reply.body["message"], what
    assert reply.headers["Content-Type"].startswith("application/json"), what
    assert reply.headers.get("WWW-Authenticate") == "Bearer", (what, reply.headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(
    payload: dict[str, Any], secret: str | None, alg: str = "HS256", sign_with: str | None = None
) -> str:
    """A JWT built by hand, so that nothing in a library stops a malformed one being made.
    Signed with ``sign_with`` (default: ``alg``) unless ``secret`` is None."""
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    signing_input = f"{header}.{body}".encode()
    digests = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
    signature = ""
    if secret is not None:
        digest = digests[sign_with or alg]
        signature = b64url(hmac.new(secret.encode(), signing_input, digest).digest())
    return f"{header}.{body}.{signature}"


def claims(**fields: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "mallory", "iat": now, "exp": now + 3600, **fields}


def without(name: str) -> dict[str, Any]:
    c = claims()
    del c[name]
    return c


def refused_tokens(secret: str) -> dict[str, str]:
    """Tokens a shopper must never get in with; ``secret`` is the service's own."""
    now = int(time.time())
    return {
        "garbage": "not-a-jwt",
        "three garbage parts": "a.b.c",
        "another secret": issue_token(OTHER_SECRET, "mallory"),
        "expired": issue_token(secret, "mallory", ttl_s=-60),
        "expired by hand": craft(claims(iat=now - 120, exp=now - 60), secret),
        "alg none by hand": craft(claims(), None, alg="none"),
        "alg none, HS256 signature": craft(claims(), secret, alg="none", sign_with="HS256"),
        "alg none by PyJWT": jwt.encode(claims(), key=None, algorithm="none"),
        "no sub": craft(without("sub"), secret),
        "no exp": craft(without("exp"), secret),
        "sub is a number": craft(claims(sub=42), secret),
        "sub is null": craft(claims(sub=None), secret),
        "sub is a list": craft(claims(sub=["mallory"]), secret),
        "sub is empty": craft(claims(sub=""), secret),
        "sub over 128 chars": craft(claims(sub="u" * 129), secret),
        "exp not a number": craft(claims(exp="tomorrow"), secret),
        "not yet valid (nbf)": craft(claims(nbf=now + 3600), secret),
        "over 4096 chars": craft(claims(pad="x" * 4200), secret),
        "HS512 with the right secret": craft(claims(), secret, alg="HS512"),
        "HS384 with the right secret": craft(claims(), secret, alg="HS384"),
        "signature stripped": craft(claims(), secret).rsplit(".", 1)[0] + ".",
        "payload swapped": (
            craft(claims(sub="alice"), secret).split(".")[0]
            + "."
            + b64url(json.dumps(claims(sub="bob")).encode())
            + "."
            + craft(claims(sub="alice"), secret).split(".")[2]
        ),
    }


async def test_control_tokens_are_accepted(service: Service) -> None:
    """The hand-made tokens below are refused for what they break, not for how they are made."""
    sale = await service.create_sale(stock=10)
    secret = service.settings.token_secret
    for label, token in {
        "issue_token": issue_token(secret, "alice"),
        "by hand": craft(claims(sub="bob"), secret),
        "sub of 128 chars": craft(claims(sub="c" * 128), secret),
        "lower-case scheme": craft(claims(sub="dave"), secret),
    }.items():
        scheme = "bearer" if label == "lower-case scheme" else "Bearer"
        reply = await service.call(
            "POST",
            f"/v1/sales/{sale['sale_id']}/buy",
            headers={"Authorization": f"{scheme} {token}"},
        )
        assert reply.status == 201, (label, reply.body)


async def test_bad_authorization_headers_are_401(service: Service) -> None:
    sale = await service.create_sale(stock=10)
    token = issue_token(service.settings.token_secret, "alice")
    headers: dict[str, dict[str, str]] = {
        "no header": {},
        "empty header": {"Authorization": ""},
        "scheme only": {"Authorization": "Bearer"},
        "scheme and blanks": {"Authorization": "Bearer    "},
        "Basic scheme": {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()},
        "Token scheme with a good token": {"Authorization": f"Token {token}"},
        "a good token without scheme": {"Authorization": token},
        "the admin token": service.admin_headers,
    }
    for label, h in headers.items():
        reply = await service.call("POST", f"/v1/sales/{sale['sale_id']}/buy", json={}, headers=h)
        assert_unauthorized(reply, label)
    assert (await service.stats(sale["sale_id"]))["reserved"] == 0


async def test_refused_tokens_are_401(service: Service) -> None:
    sale = await service.create_sale(stock=10)
    tokens = refused_tokens(service.settings.token_secret)
    assert len(tokens["over 4096 chars"]) > 4096
    for label, token in tokens.items():
        reply = await service.call(
            "POST",
            f"/v1/sales/{sale['sale_id']}/buy",
            json={},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert_unauthorized(reply, label)
    stats = await service.stats(sale["sale_id"])
    assert (stats["available"], stats["reserved"]) == (10, 0)


async def test_every_shopper_endpoint_wants_a_token(service: Service) -> None:
    sale = await service.create_sale(stock=10)
    bought = await service.buy(sale["sale_id"], "alice")
    order_id = bought.body["order"]["order_id"]
    expired = {"Authorization": f"Bearer {issue_token(service.settings.token_secret, 'alice', -1)}"}
    for method, path in [
        ("POST", f"/v1/sales/{sale['sale_id']}/buy"),
        ("GET", f"/v1/orders/{order_id}"),
        ("POST", f"/v1/orders/{order_id}/cancel"),
    ]:
        for label, h in {"none": {}, "expired": expired}.items():
            assert_unauthorized(await service.call(method, path, headers=h), f"{path} {label}")
    # nor can a token pay: the payment service does (tests/test_payments.py)
    assert (await service.order_action(order_id, "alice", "pay")).status == 410
    # the order was neither paid nor cancelled by any of that
    mine = await service.call("GET", f"/v1/orders/{order_id}", headers=service.auth("alice"))
    assert mine.body["order"]["status"] == "reserved"
    # the sale view is public
    assert (await service.call("GET", f"/v1/sales/{sale['sale_id']}")).status == 200


async def test_admin_endpoints_refuse_everyone_else(service: Service) -> None:
    sale = await service.create_sale(stock=10)
    sid = sale["sale_id"]
    callers: dict[str, Callable[[], dict[str, str]]] = {
        "no token": dict,
        "wrong token": lambda: {"Authorization": "Bearer not-the-admin-token"},
        "admin token with a suffix": lambda: {
            "Authorization": f"Bearer {service.settings.admin_token}x"
        },
        "admin token, Basic scheme": lambda: {
            "Authorization": f"Basic {service.settings.admin_token}"
        },
        "a shopper JWT": lambda: service.auth("alice"),
    }
    endpoints = [
        ("POST", "/v1/admin/sales", sale_spec(sale_id=f"{sid}-x")),
        ("POST", f"/v1/admin/sales/{sid}/pause", None),
        ("POST", f"/v1/admin/sales/{sid}/resume", None),
        ("POST", f"/v1/admin/sales/{sid}/close", None),
        ("GET", f"/v1/admin/sales/{sid}/stats", None),
        ("GET", "/v1/admin/sales", None),
        ("GET", f"/v1/admin/sales/{sid}", None),
        ("PATCH", f"/v1/admin/sales/{sid}", {"stock": 1}),
        ("DELETE", f"/v1/admin/sales/{sid}", None),
    ]
    for method, path, body in endpoints:
        for label, headers in callers.items():
            reply = await service.call(method, path, json=body, headers=headers())
            assert_unauthorized(reply, f"{method} {path} with {label}")
    # nothing happened: the sale is still open, and no other sale was created
    view = await service.call("GET", f"/v1/sales/{sid}")
    assert view.body["sale"]["status"] == "open"
    assert (await service.call("GET", f"/v1/sales/{sid}-x")).status == 404
    assert (await service.buy(sid, "alice")).status == 201


async def test_a_remembered_token_still_expires(service: Service) -> None:
    """Decoded tokens are cached; the cache must not outlive the token's ``exp``."""
    sale = await service.create_sale(stock=10, per_user_limit=5)
    exp = int(time.time()) + 1
    if exp - time.time() < 0.2:
        exp += 1
    headers = {"Authorization": f"Bearer {craft(claims(exp=exp), service.settings.token_secret)}"}
    path = f"/v1/sales/{sale['sale_id']}/buy"
    assert (await service.call("POST", path, headers=headers)).status == 201
    await asyncio.sleep(exp - time.time() + 0.05)
    assert_unauthorized(await service.call("POST", path, headers=headers), "expired while cached")


def test_the_verifier_agrees_with_pyjwt() -> None:
    """The service's own HS256 check accepts what PyJWT accepts, with the same claims, and
    refuses what PyJWT refuses."""
    from flashsale.auth import HS256Verifier
    from flashsale.errors import Unauthorized

    secret = "verifier-secret-of-at-least-32-bytes-012345"
    verifier = HS256Verifier(secret)
    now = int(time.time())
    good = [
        jwt.encode(claims(sub="ann"), secret, algorithm="HS256"),
        jwt.encode(claims(sub="ünïcödé", nbf=now - 5, extra={"a": [1, 2]}), secret, "HS256"),
        jwt.encode(claims(sub="kid", exp=now + 1.5), secret, "HS256", headers={"kid": "k1"}),
    ]
    for token in good:
        expected = jwt.decode(token, secret, algorithms=["HS256"])
        assert verifier.claims(token, time.time()) == expected
    bad = [
        *refused_tokens(secret).values(),
        craft(claims(iat="yesterday"), secret),
        jwt.encode(claims(), secret, "HS256", headers={"crit": ["exp"]}),
        "é.é.é",
        "..",
    ]
    for token in bad:
        try:
            jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["sub", "exp"]})
            pyjwt_accepts = True
        except jwt.InvalidTokenError:
            pyjwt_accepts = False
        try:
            ours = verifier.claims(token, time.time())
        except Unauthorized:
            ours = None
        # a bad "sub" is ShopperAuth's to refuse (tested above through the service), not this
        sub_ok = ours is not None and isinstance(ours.get("sub"), str) and len(ours["sub"]) > 0
        if sub_ok:
            assert pyjwt_accepts, token


def test_the_verifier_takes_strict_base64url_only() -> None:
    """Every other spelling of a token is refused (not a 500, and not a new cache entry)."""
    from flashsale.auth import ShopperAuth
    from flashsale.errors import Unauthorized

    secret = "verifier-secret-of-at-least-32-bytes-012345"
    auth = ShopperAuth(secret)
    token = issue_token(secret, "ann")
    assert auth.user_id(f"Bearer {token}") == "ann"
    header, payload, signature = token.split(".")
    spellings = [
        "\udcff.a.b",  # a non-ASCII byte, as aiohttp hands it over (surrogateescape)
        f"{header}.{payload}.{signature}!!!!",
        f"{header}.{payload}.{signature[:10]}$${signature[10:]}",
        f"{header}.{payload}.{signature}=",
        f"{header} .{payload}.{signature}",
    ]
    for spelling in spellings:
        with pytest.raises(Unauthorized):
            auth.user_id(f"Bearer {spelling}")


async def _raw_request(service: Service, head: bytes) -> tuple[int, dict[str, Any]]:
    """Send bytes no HTTP client library would (a header of non-ASCII bytes), read the answer."""
    host, port = service.client.server.host, service.client.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(body)


@pytest.mark.parametrize("token", [b"\xff", b"\xc3\xa9t\xc3\xa9", b"abc\xff.def.ghi", b"a\x80"])
async def test_non_ascii_bearer_bytes_are_401_not_500(service: Service, token: bytes) -> None:
    sale = await service.create_sale(stock=10)
    sid = sale["sale_id"].encode()
    for path in (b"/v1/sales/" + sid + b"/buy", b"/v1/admin/sales/" + sid + b"/close"):
        head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + b"\r\n"
        status, body = await _raw_request(service, head)
        assert (status, body["error"]) == (401, "unauthorized"), (token, path, body)
    assert (await service.stats(sale["sale_id"]))["reserved"] == 0
    assert (await service.call("GET", f"/v1/sales/{sale['sale_id']}")).body["sale"][
        "status"
    ] == "open"
