"""Redeeming F-codes at the buy endpoint: once, only for their sale and owner, within the
F-code window and stock; given back when the order is released; guessing throttled."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from flashsale.fcodes import codes
from tests.conftest import ServiceFactory
from tests.helpers import CountingScript, Service, gather_limited


async def put_codes(
    service: Service, sale_id: str, n: int, *, campaign: str = "launch", bound: str = ""
) -> list[str]:
    """Issue ``n`` codes the way the issuing tools store them: digests in PostgreSQL and Redis."""
    key = service.services.fcode_key
    shown = [codes.new_code() for _ in range(n)]
    digests = [codes.digest(key, codes.normalize(c)) for c in shown]
    pool = service.services.pool
    await pool.execute(
        "INSERT INTO fcode_campaigns (sale_id, campaign, issued) VALUES ($1, $2, $3) "
        "ON CONFLICT (sale_id, campaign) DO UPDATE SET issued = fcode_campaigns.issued + $3",
        sale_id, campaign, n,
    )  # fmt: skip
    await pool.executemany(
        "INSERT INTO fcodes (digest, sale_id, campaign, bound_user) VALUES ($1, $2, $3, $4)",
        [(d, sale_id, campaign, bound or None) for d in digests],
    )
    engine = service.services.engine
    args: list[str | int | float] = [x for d in digests for x in (d, campaign, bound)]
    await engine.scripts.load_fcodes(engine.redis, [engine.keys.sale(sale_id).fcodes], args)
    return shown


async def revoke(service: Service, sale_id: str, code: str) -> None:
    engine = service.services.engine
    d = codes.digest(service.services.fcode_key, codes.normalize(code))
    await engine.scripts.revoke_fcodes(engine.redis, [engine.keys.sale(sale_id).fcodes], [d])


def fcode_sale(**fields: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    spec = {
        "stock": 10,
        "fcode_stock": 4,
        "per_user_limit": 1,
        "fcode_opens_at": (now - timedelta(seconds=5)).isoformat(),
        "starts_at": (now - timedelta(seconds=1)).isoformat(),
    }
    spec.update(fields)
    return spec


async def test_a_code_buys_once_among_a_thousand(make_service: ServiceFactory) -> None:
    service = await make_service(fcode_failures_per_address=10_000)
    sale = await service.create_sale(**fcode_sale(stock=2000, fcode_stock=1000))
    [code] = await put_codes(service, sale["sale_id"], 1)
    replies = await gather_limited(
        200, *(service.buy(sale["sale_id"], f"u{i}", {"fcode": code}) for i in range(1000))
    )
    outcomes = Counter((r.status, r.body.get("error")) for r in replies)
    assert outcomes == {(201, None): 1, (409, "fcode_used"): 999}
    winner = next(r for r in replies if r.status == 201)
    assert winner.body["order"]["campaign"] == "launch"
    view = (await service.call("GET", f"/v1/sales/{sale['sale_id']}")).body["sale"]
    assert (view["fcode_available"], view["available"]) == (999, 1000)
    stats = await service.wait_for_postgres(sale["sale_id"])
    assert stats["reserved"] == 1
    row = await service.services.pool.fetchrow(
        "SELECT state, order_id, redeemed_by FROM fcodes WHERE sale_id = $1", sale["sale_id"]
    )
    assert (row["state"], row["order_id"]) == ("redeemed", winner.body["order"]["order_id"])
    assert row["redeemed_by"] == winner.body["order"]["user_id"]
    campaign = await service.services.pool.fetchval(
        "SELECT campaign FROM orders WHERE order_id = $1", winner.body["order"]["order_id"]
    )
    assert campaign == "launch"


async def test_bound_code_is_for_its_owner_only(service: Service) -> None:
    sale = await service.create_sale(**fcode_sale())
    [code] = await put_codes(service, sale["sale_id"], 1, bound="alice")
    stranger = await service.buy(sale["sale_id"], "mallory", {"fcode": code})
    assert (stranger.status, stranger.body["error"]) == (409, "fcode_invalid")
    owner = await service.buy(sale["sale_id"], "alice", {"fcode": code})
    assert owner.status == 201


async def test_revoked_unknown_and_foreign_codes_are_refused(service: Service) -> None:
    sale = await service.create_sale(**fcode_sale())
    other = await service.create_sale(**fcode_sale())
    revoked, foreign = await put_codes(service, sale["sale_id"], 2)
    await revoke(service, sale["sale_id"], revoked)
    reply = await service.buy(sale["sale_id"], "a", {"fcode": revoked})
    assert (reply.status, reply.body["error"]) == (409, "fcode_revoked")
    reply = await service.buy(other["sale_id"], "b", {"fcode": foreign})
    assert (reply.status, reply.body["error"]) == (409, "fcode_invalid")
    reply = await service.buy(sale["sale_id"], "c", {"fcode": codes.new_code()})
    assert (reply.status, reply.body["error"]) == (409, "fcode_invalid")
    assert (await service.stats(sale["sale_id"]))["reserved"] == 0
    assert (await service.buy(sale["sale_id"], "b", {"fcode": foreign})).status == 201


async def test_a_typo_is_refused_without_redis(service: Service) -> None:
    sale = await service.create_sale(**fcode_sale())
    [code] = await put_codes(service, sale["sale_id"], 1)
    raw = codes.normalize(code)
    typo = raw[:5] + ("0" if raw[5] != "0" else "1") + raw[6:]
    engine = service.services.engine
    counter = CountingScript(engine.scripts.buy)
    engine.scripts.buy = counter  # type: ignore[assignment]
    reply = await service.buy(sale["sale_id"], "a", {"fcode": typo})
    assert (reply.status, reply.body["error"]) == (400, "fcode_malformed")
    assert counter.calls == 0
    for bad in ("", "x", 12345, None):
        body = {"fcode": bad}
        reply = await service.buy(sale["sale_id"], "a", body)
        assert reply.status == 400, body
    two = await service.buy(sale["sale_id"], "a", {"fcode": code, "quantity": 2})
    assert two.status == 400
    # the typo did not count as a guess, and the code still works
    assert (await service.stats(sale["sale_id"]))["reserved"] == 0
    assert (await service.buy(sale["sale_id"], "a", {"fcode": code.lower()})).status == 201


async def test_lanes_never_borrow_from_each_other(service: Service) -> None:
    sale = await service.create_sale(**fcode_sale(stock=5, fcode_stock=2))
    sale_id = sale["sale_id"]
    fcodes = await put_codes(service, sale_id, 3)
    public = [await service.buy(sale_id, f"p{i}") for i in range(5)]
    assert [r.status for r in public] == [201, 201, 201, 409, 409]
    assert {r.body["error"] for r in public[3:]} == {"sold_out"}
    held = [await service.buy(sale_id, f"f{i}", {"fcode": c}) for i, c in enumerate(fcodes)]
    assert [r.status for r in held] == [201, 201, 409]
    assert held[2].body["error"] == "sold_out"
    # the code that met an empty F-code lane stays unused: it works once a unit comes back
    first = held[0].body["order"]
    assert (await service.order_action(first["order_id"], "f0", "cancel")).status == 200
    assert (await service.buy(sale_id, "p9")).body["error"] == "sold_out", "public lane unchanged"
    assert (await service.buy(sale_id, "f2", {"fcode": fcodes[2]})).status == 201
    stats = await service.stats(sale_id)
    assert stats["available"] + stats["reserved"] + stats["paid"] == 5 - 0


async def test_released_code_is_usable_again(service: Service) -> None:
    sale = await service.create_sale(**fcode_sale(reservation_ttl_s=1))
    sale_id = sale["sale_id"]
    cancelled, lapsed = await put_codes(service, sale_id, 2)
    order = (await service.buy(sale_id, "a", {"fcode": cancelled})).body["order"]
    assert (await service.order_action(order["order_id"], "a", "cancel")).status == 200
    assert (await service.buy(sale_id, "b", {"fcode": cancelled})).status == 201
    assert (await service.buy(sale_id, "c", {"fcode": lapsed})).status == 201
    before = (await service.call("GET", f"/v1/sales/{sale_id}")).body["sale"]["fcode_available"]
    await asyncio.sleep(1.6)  # both reservations lapse and the sweeper returns them
    view = (await service.call("GET", f"/v1/sales/{sale_id}")).body["sale"]
    assert view["fcode_available"] == before + 2
    assert view["available"] == 6, "F-code units went back to the F-code lane"
    assert (await service.buy(sale_id, "d", {"fcode": lapsed})).status == 201
    await service.wait_for_postgres(sale_id)
    states = await service.services.pool.fetch(
        "SELECT state, redeemed_by FROM fcodes WHERE sale_id = $1 ORDER BY redeemed_by", sale_id
    )
    assert [(s["state"], s["redeemed_by"]) for s in states] == [
        ("issued", "b"),
        ("redeemed", "d"),
    ]


async def test_revoking_a_used_code_keeps_its_order_but_not_the_code(service: Service) -> None:
    sale = await service.create_sale(**fcode_sale())
    [code] = await put_codes(service, sale["sale_id"], 1)
    order = (await service.buy(sale["sale_id"], "a", {"fcode": code})).body["order"]
    await revoke(service, sale["sale_id"], code)
    got = await service.call("GET", f"/v1/orders/{order['order_id']}", headers=service.auth("a"))
    assert got.body["order"]["status"] == "reserved"
    assert (await service.order_action(order["order_id"], "a", "cancel")).status == 200
    reply = await service.buy(sale["sale_id"], "b", {"fcode": code})
    assert reply.body["error"] == "fcode_revoked"


async def test_fcode_window_opens_before_the_public(service: Service) -> None:
    now = datetime.now(UTC)
    early = await service.create_sale(
        **fcode_sale(
            starts_at=(now + timedelta(hours=1)).isoformat(),
            ends_at=(now + timedelta(hours=2)).isoformat(),
        )
    )
    [code] = await put_codes(service, early["sale_id"], 1)
    assert (await service.buy(early["sale_id"], "p")).body["error"] == "sale_not_open"
    assert (await service.buy(early["sale_id"], "f", {"fcode": code})).status == 201
    later = await service.create_sale(
        **fcode_sale(fcode_opens_at=(now + timedelta(minutes=30)).isoformat())
    )
    [code] = await put_codes(service, later["sale_id"], 1)
    reply = await service.buy(later["sale_id"], "f", {"fcode": code})
    assert reply.body["error"] == "sale_not_open"
    assert (await service.buy(later["sale_id"], "f", {"fcode": code})).status == 409


async def test_guessing_is_throttled(make_service: ServiceFactory) -> None:
    service = await make_service(fcode_failures_per_user=5, fcode_failures_per_address=8)
    sale = await service.create_sale(**fcode_sale())
    sale_id = sale["sale_id"]
    [good] = await put_codes(service, sale_id, 1)
    guesses = [await service.buy(sale_id, "guesser", {"fcode": codes.new_code()}) for _ in range(5)]
    assert {r.body["error"] for r in guesses} == {"fcode_invalid"}
    throttled = await service.buy(sale_id, "guesser", {"fcode": good})
    assert (throttled.status, throttled.body["error"]) == (429, "fcode_throttled")
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60
    # the pause is the guesser's own: other shoppers behind the same address still have room
    others = [await service.buy(sale_id, f"o{i}", {"fcode": codes.new_code()}) for i in range(3)]
    assert {r.body["error"] for r in others} == {"fcode_invalid"}
    # 8 failures from this address: everyone behind it waits now
    crowd = await service.buy(sale_id, "late", {"fcode": good})
    assert (crowd.status, crowd.body["error"]) == (429, "fcode_throttled")
    stats = await service.services.engine.get_sale(sale_id)
    assert stats.counters.fcode_failures == 8
    # a public buy is never throttled by F-code failures
    assert (await service.buy(sale_id, "guesser")).status == 201
