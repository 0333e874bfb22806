"""A rehearsal against a running service removes the sale it made from the service's stores
(or keeps it with --keep and says what it kept): its Redis keys and its PostgreSQL rows, and
nothing of any other sale."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import redis as redis_sync

from loadtest.rehearsal import cleanup
from tests.helpers import Service


def at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def _a_sale_with_everything(service: Service, sale_id: str) -> None:
    """Bookings, F-codes, orders (one paid: a payment), their events in the outbox."""
    await service.create_sale(
        sale_id=sale_id, stock=5, fcode_stock=1, booking_opens_at=at(-60),
        booking_closes_at=at(3600), booking_required=True, admission="arrival",
    )  # fmt: skip
    reply = await service.call(
        "POST", f"/v1/admin/sales/{sale_id}/fcodes", json={"campaign": "vip", "count": 2},
        headers=service.admin_headers,
    )  # fmt: skip
    assert reply.status in (200, 201), reply.body
    for user in ("u1", "u2"):
        booked = await service.call(
            "POST", f"/v1/sales/{sale_id}/bookings", json={}, headers=service.auth(user)
        )
        assert booked.status in (200, 201), booked.body
    first = await service.buy(sale_id, "u1")
    assert first.status == 201, first.body
    assert (await service.buy(sale_id, "u2")).status == 201
    paid = await service.pay(first.body["order"]["order_id"])
    assert paid.status == 200, paid.body
    await service.wait_for_postgres(sale_id)


async def _rows(service: Service, sale_id: str) -> dict[str, int]:
    counts = {}
    for table in cleanup.TABLES:
        counts[table] = await service.services.pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE sale_id = $1", sale_id
        )
    return counts


def _keys(redis_url: str, prefix: str, sale_id: str) -> list[bytes]:
    client = redis_sync.Redis.from_url(redis_url)
    try:
        return list(client.scan_iter(match=cleanup.sale_key_pattern(prefix, sale_id), count=10_000))
    finally:
        client.close()


async def test_the_sale_made_by_a_rehearsal_goes_and_no_other(service: Service) -> None:
    s = service.settings
    # "s1" and "s10" share a prefix of their ids: only s1's keys match s1's hash tag
    for sale_id in ("s1", "s10"):
        await _a_sale_with_everything(service, sale_id)
    before = await _rows(service, "s1")
    assert all(before[t] for t in ("orders", "bookings", "fcodes", "fcode_campaigns",
                                   "payments", "outbox", "sales")), before  # fmt: skip
    other_rows, other_keys = await _rows(service, "s10"), _keys(s.redis_url, s.key_prefix, "s10")
    assert _keys(s.redis_url, s.key_prefix, "s1")

    kept = await asyncio.to_thread(
        cleanup.kept_sale, s.redis_url, s.key_prefix, s.database_url, "s1"
    )
    assert "kept sale s1:" in kept
    assert f"{before['orders']:,} orders" in kept
    said = await asyncio.to_thread(
        cleanup.remove_sale, s.redis_url, s.key_prefix, s.database_url, "s1"
    )
    assert said.startswith("deleted sale s1:"), said
    assert "left" not in said
    assert await _rows(service, "s1") == dict.fromkeys(cleanup.TABLES, 0)
    assert _keys(s.redis_url, s.key_prefix, "s1") == []
    client = redis_sync.Redis.from_url(s.redis_url)
    try:
        assert not client.sismember(f"{s.key_prefix}:sales", "s1")
        assert client.sismember(f"{s.key_prefix}:sales", "s10")
    finally:
        client.close()
    assert await _rows(service, "s10") == other_rows
    # nothing of s10 went; the service's reporter may have noted s10's status meanwhile
    after = set(_keys(s.redis_url, s.key_prefix, "s10"))
    assert set(other_keys) <= after
    assert after - set(other_keys) <= {f"{s.key_prefix}:{{s10}}:reported".encode()}


def test_a_key_pattern_matches_its_sale_only() -> None:
    assert cleanup.sale_key_pattern("p", "s1") == "p:{s1}:*"
    assert cleanup.sale_key_pattern("p*", "s[1]") == "p\\*:{s\\[1\\]}:*"
