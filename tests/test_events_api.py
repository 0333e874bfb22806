"""``GET /v1/admin/events``: the shop pulls the events; the cursor never passes over one that
commits after a later-numbered one."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import pytest

from flashsale.outbox.cursor import Cursor, CursorError
from flashsale.outbox.events import record_events
from tests.helpers import Service
from tests.outbox_helpers import EVENT_TEXT, order_rows, record


async def _pull(service: Service, after: str | None, limit: int = 1000) -> dict[str, Any]:
    query = f"?limit={limit}" + ("" if after is None else f"&after={after}")
    reply = await service.call("GET", "/v1/admin/events" + query, headers=service.admin_headers)
    assert reply.status == 200, reply.body
    return reply.body


async def _until(
    service: Service, after: str, count: int, timeout_s: float = 60.0
) -> tuple[list[str], str]:
    """The next ``count`` events after ``after`` (waiting for them: any transaction still open
    on the server, another database's included, holds back what committed after it began),
    and the cursor after them; then nothing more."""
    ids: list[str] = []
    deadline = time.monotonic() + timeout_s
    while len(ids) < count:
        assert time.monotonic() < deadline, f"{len(ids)} of {count} events came"
        page = await _pull(service, after, limit=count - len(ids))
        ids += [e["id"] for e in page["events"]]
        after = page["next_cursor"]
        if not page["events"]:
            await asyncio.sleep(0.05)
    return ids, after


async def _to_the_end(service: Service, after: str | None = None) -> tuple[list[str], str]:
    """Every event after ``after`` now: their ids, and the cursor after them."""
    ids: list[str] = []
    while True:
        page = await _pull(service, after, limit=100)
        ids += [e["id"] for e in page["events"]]
        after = page["next_cursor"]
        if not page["events"]:
            assert after is not None
            return ids, after


async def test_pages_carry_the_events_as_webhooks_do(service: Service) -> None:
    sid = (await service.create_sale(price_cents=700))["sale_id"]
    _, start = await _to_the_end(service)
    rows = [r for _ in range(3) for r in order_rows(sid, ["reserved", "cancelled"])]
    await record(service.services.pool, rows)
    await _until(service, start, 6)
    first = await _pull(service, start, limit=4)
    second = await _pull(service, first["next_cursor"], limit=4)
    events = first["events"] + second["events"]
    assert len(first["events"]) == 4
    assert len(second["events"]) == 2
    assert [(e["data"]["order_id"], e["data"]["sequence"]) for e in events] == [
        (r.order_id, r.version) for r in rows
    ]
    assert {e["type"] for e in events} == {"order.reserved", "order.cancelled"}
    stored = {
        r["event_id"]: r["payload"]
        for r in await service.services.pool.fetch(
            f"SELECT event_id, {EVENT_TEXT} AS payload FROM outbox"
        )
    }
    for e in events:
        assert {k: v for k, v in e.items() if k != "id"} == json.loads(stored[e["id"]])
        assert e["data"]["amount_cents"] == 700
    # nothing new: the same cursor again
    assert await _pull(service, second["next_cursor"]) == {
        "events": [], "next_cursor": second["next_cursor"]
    }  # fmt: skip


async def test_a_later_numbered_event_committed_first_is_not_passed_over(
    service: Service, database_url: str
) -> None:
    sid = (await service.create_sale())["sale_id"]
    _, start = await _to_the_end(service)
    earlier, later = order_rows(sid, ["reserved"]), order_rows(sid, ["reserved"])
    a, b = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        ta, tb = a.transaction(), b.transaction()
        await ta.start()
        await tb.start()
        await record_events(a, earlier)  # numbered first ...
        await record_events(b, later)  # ... numbered second, and committed first
        ids = await service.services.pool.fetch(
            "SELECT order_id, id FROM outbox WHERE order_id = ANY($1) ORDER BY id",
            [earlier[0].order_id, later[0].order_id],
        )
        assert ids == []  # not committed yet
        await tb.commit()
        seen, cursor = await _to_the_end(service, start)
        assert seen == []  # held back while the earlier one may still commit
        await ta.commit()
        after_both, end = await _until(service, cursor, 2)
        assert await _order_ids(service, after_both) == [earlier[0].order_id, later[0].order_id]
        assert (await _pull(service, end))["events"] == []
    finally:
        await a.close()
        await b.close()


async def test_a_transaction_numbered_first_but_writing_last_is_not_passed_over(
    service: Service, database_url: str
) -> None:
    """Transaction ids and row ids can disagree: A takes its transaction id first and inserts
    last. Either way each event comes exactly once across the pages."""
    sid = (await service.create_sale())["sale_id"]
    _, start = await _to_the_end(service)
    first, second = order_rows(sid, ["reserved"]), order_rows(sid, ["reserved"])
    a, b = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        ta, tb = a.transaction(), b.transaction()
        await ta.start()
        await tb.start()
        await a.execute("SELECT pg_current_xact_id()")  # A's transaction id comes first
        await record_events(b, second)
        await record_events(a, first)  # the higher row id, in the older transaction
        await tb.commit()
        seen, cursor = await _to_the_end(service, start)
        assert seen == []
        await ta.commit()
        rest, end = await _until(service, cursor, 2)
        assert await _order_ids(service, rest) == [first[0].order_id, second[0].order_id]
        assert (await _pull(service, end))["events"] == []
        assert len(set(seen + rest)) == len(seen + rest) == 2
    finally:
        await a.close()
        await b.close()


async def _order_ids(service: Service, event_ids: list[str]) -> list[str]:
    rows = await service.services.pool.fetch(
        "SELECT event_id, order_id FROM outbox WHERE event_id = ANY($1)", event_ids
    )
    by_id = {r["event_id"]: r["order_id"] for r in rows}
    return [by_id[i] for i in event_ids]


@pytest.mark.parametrize(
    "query",
    ["after=", "after=bm9wZQ", "after=!!", "after=" + "A" * 65, "after=MS4y%3D",
     "limit=0", "limit=1001", "limit=x", "limit=1&limit=2", "since=1"],
)  # fmt: skip
async def test_a_bad_query_is_400(service: Service, query: str) -> None:
    reply = await service.call("GET", f"/v1/admin/events?{query}", headers=service.admin_headers)
    assert reply.status == 400, (query, reply.body)
    assert reply.body["error"] == "invalid_request"


async def test_only_the_operator_pulls(service: Service) -> None:
    reply = await service.call("GET", "/v1/admin/events", headers=service.auth("u1"))
    assert reply.status == 401


def test_cursors_round_trip_and_refuse_lookalikes() -> None:
    for cursor in [Cursor(), Cursor(1, 2), Cursor(2**64 - 1, 2**63 - 1)]:
        assert Cursor.decode(cursor.encode()) == cursor
    good = Cursor(7, 8).encode()
    for bad in [good + "=", good.upper(), "", Cursor(2**64, 1).encode(), "MDcuOA"]:
        with pytest.raises(CursorError):
            Cursor.decode(bad)
