"""The relay: every event reaches every receiver, signed, at least once, in order per order;
failing, hanging and gone receivers; several relays at once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from flashsale.auth import issue_token
from flashsale.cli.common import UsageError
from flashsale.cli.events import parse_since
from flashsale.ids import new_order_id
from flashsale.outbox import receivers, relay
from flashsale.outbox.cursor import Cursor, read_after
from flashsale.outbox.relay import ANALYZE_FROM_ROWS, Relay, RelayConfig
from flashsale.settings import Settings, SettingsError
from flashsale.store.orders import OrderRow
from flashsale.store.writer import OrderWriter
from flashsale.webhooks import signing
from tests.helpers import Service, flashsale_env, run_flashsale, sale_spec
from tests.outbox_helpers import (
    EVENT_TEXT,
    WEBHOOK_KEY,
    WEBHOOK_SECRET,
    Arrival,
    Receiver,
    event_ids,
    order_rows,
    pending,
    record,
    relay_config,
    run_events_cli,
    wait_until,
)
from tests.servers import free_port

# events wait for every transaction open on the server to end (see outbox/cursor.py): other
# databases' long ones included, so the waits are generous
WAIT_S = 60.0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


@contextlib.asynccontextmanager
async def running(pool: asyncpg.Pool, config: RelayConfig) -> AsyncIterator[Relay]:
    relay = Relay(pool, config)
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _sale_with_events(
    service: Service, url: str, orders: int, statuses: tuple[str, ...] = ("reserved", "paid")
) -> tuple[str, list[list[OrderRow]]]:
    """A sale, ``url`` a receiver, and events for ``orders`` orders: each order's statuses."""
    sid = (await service.create_sale())["sale_id"]
    await receivers.register(service.services.pool, url)
    per_order = [order_rows(sid, statuses, user=f"u{i}") for i in range(orders)]
    await record(service.services.pool, [r for rows in per_order for r in rows])
    return sid, per_order


async def _all_delivered(pool: asyncpg.Pool, receiver: Receiver, ids: list[str]) -> None:
    async def done() -> bool:
        return set(ids) <= receiver.delivered_ids() and await pending(pool, receiver.url) == 0

    await wait_until(done, WAIT_S)


def _assert_clean(receiver: Receiver) -> None:
    assert receiver.bad_signatures == []
    assert receiver.out_of_order == []
    assert receiver.overlaps == []


async def test_every_event_arrives_signed_once_and_in_order_per_order(
    service: Service, receiver: Receiver
) -> None:
    async def jittery(arrival: Arrival, r: Receiver) -> int:
        await asyncio.sleep(random.uniform(0, 0.01))
        return 200

    receiver.behaviour = jittery
    _, per_order = await _sale_with_events(service, receiver.url, 12, ("reserved", "paid"))
    pool = service.services.pool
    ids = await event_ids(pool, [r for rows in per_order for r in rows])
    async with running(pool, relay_config(receiver.url, batch_size=5)):
        await _all_delivered(pool, receiver, ids)
    _assert_clean(receiver)
    assert sorted(a.webhook_id for a in receiver.arrivals) == sorted(ids)  # each exactly once
    stored = {
        r["event_id"]: r["payload"]
        for r in await pool.fetch(
            f"SELECT event_id, {EVENT_TEXT} AS payload FROM outbox WHERE event_id = ANY($1)",
            ids,
        )
    }
    for a in receiver.arrivals:
        assert a.body == stored[a.webhook_id].encode()  # what was recorded, unchanged
        assert abs(a.timestamp - time.time()) < 30
        assert a.headers["content-type"] == "application/json"
    assert [a.sequence for a in receiver.arrivals if a.order_id == per_order[0][0].order_id] == [
        1, 2,
    ]  # fmt: skip


async def test_the_relay_gives_a_growing_outbox_statistics(
    service: Service, receiver: Receiver
) -> None:
    """A launch fills outbox_deliveries long before autovacuum analyzes it, and without
    statistics PostgreSQL planned the relay's queries to read every pending delivery per
    candidate: the relay analyzes the table itself once what it took in has doubled."""
    pool = service.services.pool
    analyzed = "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'outbox_deliveries'"
    before = await pool.fetchval(analyzed)
    _, per_order = await _sale_with_events(service, receiver.url, ANALYZE_FROM_ROWS, ("reserved",))
    ids = await event_ids(pool, [rows[0] for rows in per_order])
    async with running(pool, relay_config(receiver.url, batch_size=100)):
        await _all_delivered(pool, receiver, ids)
    after = await pool.fetchval(analyzed)
    assert after is not None
    assert before is None or after > before
    _assert_clean(receiver)


async def test_the_whole_way_from_a_buy_to_the_receiver(
    service: Service, receiver: Receiver
) -> None:
    sid = (await service.create_sale(price_cents=990))["sale_id"]
    pool = service.services.pool
    async with running(pool, relay_config(receiver.url)):
        await wait_until(
            lambda: pool.fetchval(
                "SELECT count(*) > 0 FROM webhook_receivers WHERE url = $1", receiver.url
            )
        )
        order_id = (await service.buy(sid, "u1")).body["order"]["order_id"]
        assert (await service.pay(order_id)).status == 200

        async def arrived() -> bool:
            return {a.sequence for a in receiver.arrivals if a.order_id == order_id} == {1, 2}

        await wait_until(arrived, WAIT_S)
    _assert_clean(receiver)
    mine = [a.event for a in receiver.arrivals if a.order_id == order_id]
    assert [e["type"] for e in mine] == ["order.reserved", "order.paid"]
    assert mine[1]["data"] | {"created_at": "", "expires_at": "", "updated_at": ""} == {
        "order_id": order_id, "sale_id": sid, "user_id": "u1", "sequence": 2, "status": "paid",
        "quantity": 1, "amount_cents": 990, "currency": "USD", "created_at": "",
        "expires_at": "", "updated_at": "",
    }  # fmt: skip


async def test_a_failing_receiver_gets_every_event_with_backoff_and_in_order(
    service: Service, receiver: Receiver, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    healthy = False

    async def fails_at_first(arrival: Arrival, r: Receiver) -> int:
        return 200 if healthy and len(r.attempts(arrival.webhook_id)) > 3 else 500

    receiver.behaviour = fails_at_first
    _, per_order = await _sale_with_events(service, receiver.url, 3, ("reserved", "cancelled"))
    pool = service.services.pool
    ids = await event_ids(pool, [r for rows in per_order for r in rows])
    config = relay_config(receiver.url, retry_base_s=0.1, retry_cap_s=0.4)
    async with running(pool, config):
        await wait_until(lambda: _failing(pool, receiver.url), WAIT_S)
        code, out, _ = await run_events_cli(settings, receiver.url, "events", "status", "--json")
        assert code == 1
        status = _receiver(json.loads(out), receiver.url)
        assert status["state"] == "failing"
        assert status["last_error"] == "HTTP 500"
        assert status["backlog"] == len(ids)
        healthy = True
        await _all_delivered(pool, receiver, ids)
    _assert_clean(receiver)
    for event_id in ids:
        times = [a.at for a in receiver.attempts(event_id)]
        assert len(times) >= 4
        # waits of at least half of 0.1, 0.2, 0.4, 0.4, ... s: exponential, capped, jittered
        for k, (before, after) in enumerate(itertools.pairwise(times)):
            assert after - before >= 0.5 * min(0.4, 0.1 * 2**k) - 0.01, (k, after - before)
    assert not await _failing(pool, receiver.url)
    # the operator hears of it, at most every FAILURE_LOG_EVERY_S, not once per attempt
    warnings = [
        r.getMessage() for r in caplog.records
        if r.name == "flashsale.outbox.relay" and r.levelno == logging.WARNING
    ]  # fmt: skip
    assert warnings
    assert all(receiver.url in w and "HTTP 500" in w for w in warnings), warnings
    assert len(warnings) < sum(len(receiver.attempts(i)) for i in ids) - len(ids)
    attempts = await pool.fetch(
        "SELECT o.event_id, d.attempts FROM outbox_deliveries d JOIN outbox o"
        " ON o.id = d.outbox_id WHERE d.receiver = $1 AND o.event_id = ANY($2)",
        receiver.url, ids,
    )  # fmt: skip
    assert {r["event_id"]: r["attempts"] for r in attempts} == {
        i: len(receiver.attempts(i)) for i in ids
    }


async def test_a_receiver_that_hangs_is_timed_out_and_tried_again(
    service: Service, receiver: Receiver
) -> None:
    async def hangs_first(arrival: Arrival, r: Receiver) -> int:
        if len(r.attempts(arrival.webhook_id)) == 1:
            await asyncio.sleep(5)
        return 200

    receiver.behaviour = hangs_first
    _, per_order = await _sale_with_events(service, receiver.url, 2, ("reserved",))
    pool = service.services.pool
    ids = await event_ids(pool, [rows[0] for rows in per_order])
    async with running(pool, relay_config(receiver.url, timeout_s=0.3)):
        await _all_delivered(pool, receiver, ids)
    assert receiver.bad_signatures == []
    assert receiver.out_of_order == []
    for event_id in ids:
        first, second = (a.at for a in receiver.attempts(event_id))
        assert 0.3 <= second - first < 5  # given up on after the timeout, not the 5 s
    errors = await pool.fetch(
        "SELECT last_error FROM webhook_receivers WHERE url = $1", receiver.url
    )
    assert errors[0]["last_error"] is None  # cleared by the success after


async def test_410_disables_the_receiver_until_redeliver_names_it(
    service: Service, receiver: Receiver, settings: Settings
) -> None:
    gone = True

    async def answer(arrival: Arrival, r: Receiver) -> int:
        return 410 if gone else 200

    receiver.behaviour = answer
    since = datetime.now(UTC).isoformat()
    sid, per_order = await _sale_with_events(service, receiver.url, 1, ("reserved",))
    pool = service.services.pool
    async with running(pool, relay_config(receiver.url)):
        await wait_until(lambda: receivers.is_disabled(pool, receiver.url), WAIT_S)
        later = order_rows(sid, ["reserved"])
        await record(pool, later)  # an event while disabled: kept for when it comes back
        await asyncio.sleep(0.3)
        assert len(receiver.arrivals) == 1  # nothing more is sent to it
        code, out, _ = await run_events_cli(settings, receiver.url, "events", "status")
        assert code == 1
        assert f"{receiver.url}  disabled since " in out
        assert "answered 410 Gone" in out
        gone = False
        code, out, err = await run_events_cli(
            settings, receiver.url,
            "events", "redeliver", "--since", since, "--receiver", receiver.url,
        )  # fmt: skip
        assert code == 0, err
        # the one event taken in before it was disabled; the later one follows by itself
        assert out.startswith(f"{receiver.url}: 1 event(s) since ")
        assert "(enabled again)" in out
        ids = await event_ids(pool, [per_order[0][0], later[0]])
        await _all_delivered(pool, receiver, ids)
    assert not await receivers.is_disabled(pool, receiver.url)
    code, out, _ = await run_events_cli(settings, receiver.url, "events", "status", "--json")
    assert code == 0
    status = _receiver(json.loads(out), receiver.url)
    assert (status["state"], status["backlog"], status["delivered"]) == ("ok", 0, 2)


async def test_an_event_given_up_lets_the_next_go_and_redeliver_sends_it_again(
    service: Service, receiver: Receiver, settings: Settings
) -> None:
    refuse: set[str] = set()

    async def answer(arrival: Arrival, r: Receiver) -> int:
        return 500 if arrival.webhook_id in refuse else 200

    receiver.behaviour = answer
    since = datetime.now(UTC).isoformat()
    _, per_order = await _sale_with_events(service, receiver.url, 1, ("reserved", "cancelled"))
    pool = service.services.pool
    first, second = await event_ids(pool, per_order[0])
    refuse.add(first)
    async with running(pool, relay_config(receiver.url, give_up_s=0.3)):
        await wait_until(lambda: _delivered(receiver, second), WAIT_S)
        code, out, _ = await run_events_cli(settings, receiver.url, "events", "status", "--json")
        assert code == 1
        assert _receiver(json.loads(out), receiver.url)["given_up"] == 1
        refuse.clear()
        code, out, err = await run_events_cli(
            settings, receiver.url, "events", "redeliver", "--since", since
        )
        assert code == 0, err
        assert f"{receiver.url}: 2 event(s) since " in out
        await _all_delivered(pool, receiver, [first, second])
    # given up, then sent again on request: the order's events came 1 (failing), 2, 1, 2
    sequences = [a.sequence for a in receiver.arrivals if a.webhook_id == second]
    assert sequences == [2, 2]
    code, out, _ = await run_events_cli(settings, receiver.url, "events", "status", "--json")
    assert code == 0, out
    assert _receiver(json.loads(out), receiver.url)["given_up"] == 0


async def test_an_event_waits_for_its_predecessor_to_commit(
    service: Service, receiver: Receiver
) -> None:
    """With several order writers, event 2 of an order can commit before event 1: it waits
    for it, but not for ever (``gap_wait_s``), as one that never comes must not block."""
    sid, _ = await _sale_with_events(service, receiver.url, 0)
    pool = service.services.pool
    waits, never = order_rows(sid, ["reserved", "paid"]), order_rows(sid, ["reserved", "paid"])
    await record(pool, [waits[1], never[1]])
    async with running(pool, relay_config(receiver.url, gap_wait_s=1.5)):
        await asyncio.sleep(0.5)
        assert receiver.arrivals == []
        await record(pool, [waits[0]])
        await wait_until(lambda: _arrived(receiver, waits[1].order_id, 2), WAIT_S)
        await wait_until(lambda: _arrived(receiver, never[1].order_id, 2), WAIT_S)
    assert [a.sequence for a in receiver.arrivals if a.order_id == waits[0].order_id] == [1, 2]
    late = [a for a in receiver.arrivals if a.order_id == never[0].order_id]
    assert [a.sequence for a in late] == [2]


async def test_finding_the_next_events_reads_the_receivers_cursor_once(
    service: Service, receiver: Receiver
) -> None:
    """The receiver's row is updated at every intake, and while a long transaction holds back
    pruning each read of it walks all its versions: the relay's search for eligible events
    reads it once per statement, not once per candidate event."""
    sid, _ = await _sale_with_events(service, receiver.url, 0)
    pool = service.services.pool
    rows = [row for _ in range(5) for row in order_rows(sid, ["reserved", "paid"])]
    await record(pool, rows)
    async with pool.acquire() as conn:
        await receivers.register(conn, receiver.url)
        while await receivers.intake(conn, receiver.url, 1000):
            pass
        await conn.execute(
            "UPDATE outbox_deliveries SET delivered_at = now() WHERE receiver = $1"
            " AND order_id = ANY($2::text[]) AND sequence = 1",
            receiver.url, [r.order_id for r in rows],
        )  # fmt: skip
        plan = await conn.fetchval(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + relay._CANDIDATES, receiver.url, 60.0, 200, 800
        )
        await conn.execute("SELECT pg_advisory_unlock_all()")

    def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [node, *(n for child in node.get("Plans", []) for n in nodes(child))]

    found = nodes(json.loads(plan)[0]["Plan"])
    assert sum(n["Actual Rows"] for n in found if n.get("Relation Name") == "outbox_deliveries"
               and n.get("Alias") == "d") >= 5  # fmt: skip
    cursor_reads = [n for n in found if n.get("Relation Name") == "webhook_receivers"]
    assert cursor_reads
    assert all(n["Actual Loops"] == 1 for n in cursor_reads), cursor_reads


async def test_two_relays_share_the_work_never_together_and_in_order(
    service: Service, receiver: Receiver, database_url: str
) -> None:
    async def answer(arrival: Arrival, r: Receiver) -> int:
        await asyncio.sleep(random.uniform(0, 0.02))
        return 500 if random.random() < 0.2 else 200

    receiver.behaviour = answer
    _, per_order = await _sale_with_events(
        service, receiver.url, 20, ("reserved", "paid", "expired")
    )
    pool = service.services.pool
    ids = await event_ids(pool, [r for rows in per_order for r in rows])
    other = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        config = relay_config(receiver.url, batch_size=4, retry_base_s=0.01, retry_cap_s=0.05)
        async with running(pool, config) as one, running(other, config) as two:
            await _all_delivered(pool, receiver, ids)
    finally:
        await other.close()
    _assert_clean(receiver)  # never the same event twice at once, never ahead of its order
    assert one.counts.delivered + two.counts.delivered == len(ids)  # each delivered once
    assert one.counts.delivered
    assert two.counts.delivered


class _Overlap:
    """A receiver's behaviour: each delivery answered ``status()`` after ``delay_s()``; ``most``
    is how many it held at once."""

    def __init__(self, delay_s: Callable[[], float], status: Callable[[], int]) -> None:
        self.delay_s, self.status = delay_s, status
        self.now = self.most = 0

    async def __call__(self, arrival: Arrival, r: Receiver) -> int:
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(self.delay_s())
        self.now -= 1
        return self.status()


async def test_two_relays_split_a_backlog_rather_than_wait_for_each_other(
    service: Service, receiver: Receiver, database_url: str
) -> None:
    """While one relay's batch is out, another takes the next orders (passing over those the
    first holds) instead of finding the same candidates locked and waiting: both batches are
    in flight at once."""
    slow = receiver.behaviour = _Overlap(delay_s=lambda: 0.3, status=lambda: 200)
    _, per_order = await _sale_with_events(service, receiver.url, 40, ("reserved",))
    pool = service.services.pool
    ids = await event_ids(pool, [rows[0] for rows in per_order])
    other = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        config = relay_config(receiver.url, batch_size=10, timeout_s=5)
        async with running(pool, config) as one, running(other, config) as two:
            await _all_delivered(pool, receiver, ids)
    finally:
        await other.close()
    _assert_clean(receiver)
    assert sorted(a.webhook_id for a in receiver.arrivals) == sorted(ids)  # each once
    assert slow.most > config.batch_size  # two batches out together
    assert one.counts.delivered
    assert two.counts.delivered


async def test_serve_runs_several_relays_that_share_the_work(
    settings: Settings, receiver: Receiver, pg: asyncpg.Pool
) -> None:
    """FLASHSALE_RELAY_PROCESSES relays under serve: each event once at a time, each order's
    in order, and batches of the two out at once."""
    jittery = receiver.behaviour = _Overlap(
        delay_s=lambda: random.uniform(0.05, 0.2),
        status=lambda: 500 if random.random() < 0.1 else 200,
    )
    async with _serving(
        settings, receiver, "--workers", "1",
        FLASHSALE_RELAY_PROCESSES="2", FLASHSALE_WEBHOOK_BATCH_SIZE="5",
        FLASHSALE_WEBHOOK_RETRY_BASE_S="0.05", FLASHSALE_WEBHOOK_RETRY_CAP_S="0.1",
    ) as (_, sid, log):  # fmt: skip
        per_order = [order_rows(sid, ("reserved", "paid", "expired"), user=f"u{i}")
                     for i in range(30)]  # fmt: skip
        await record(pg, [r for rows in per_order for r in rows])
        ids = await event_ids(pg, [r for rows in per_order for r in rows])
        await _all_delivered(pg, receiver, ids)
    assert "and an order events relay (2 process(es))" in log[0]
    _assert_clean(receiver)
    assert receiver.delivered_ids() == set(ids)
    assert jittery.most > 5  # one relay has at most a batch of 5 out at once: the two shared it


async def _failing(pool: asyncpg.Pool, url: str) -> bool:
    since = await pool.fetchval("SELECT failing_since FROM webhook_receivers WHERE url = $1", url)
    return since is not None


async def _delivered(receiver: Receiver, webhook_id: str) -> bool:
    return webhook_id in receiver.delivered_ids()


async def _arrived(receiver: Receiver, order_id: str, sequence: int) -> bool:
    return any(a.order_id == order_id and a.sequence == sequence for a in receiver.arrivals)


def _receiver(status: dict[str, Any], url: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in status["receivers"] if r["url"] == url)
    return found


async def test_a_relay_killed_mid_batch_loses_nothing(
    service: Service, receiver: Receiver, settings: Settings
) -> None:
    """``flashsale relay`` SIGKILLed while its batch waits for a slow receiver; another takes
    over: every event arrives, the killed batch again under the same webhook-ids, and each
    order's events still in order."""

    async def slow(arrival: Arrival, r: Receiver) -> int:
        await asyncio.sleep(0.4)
        return 200

    receiver.behaviour = slow
    _, per_order = await _sale_with_events(service, receiver.url, 8, ("reserved", "paid"))
    pool = service.services.pool
    ids = await event_ids(pool, [r for rows in per_order for r in rows])
    env = flashsale_env(
        settings,
        FLASHSALE_WEBHOOK_URLS=receiver.url,
        FLASHSALE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        FLASHSALE_WEBHOOK_TIMEOUT_S="5",
        FLASHSALE_WEBHOOK_RETRY_BASE_S="0.05",
        FLASHSALE_WEBHOOK_RETRY_CAP_S="0.2",
    )

    async def relay() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flashsale", "relay",
            env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    first = await relay()
    try:
        await wait_until(lambda: _any_arrival(receiver), WAIT_S)
        first.kill()  # SIGKILL, its batch of first events unanswered
    finally:
        with contextlib.suppress(ProcessLookupError):
            first.kill()
        await first.wait()
    second = await relay()
    try:
        await _all_delivered(pool, receiver, ids)
    finally:
        second.terminate()
        assert await second.wait() == 0  # SIGTERM: a clean stop
    assert receiver.bad_signatures == []
    assert receiver.out_of_order == []
    bodies: dict[str, set[bytes]] = {}
    for a in receiver.arrivals:
        bodies.setdefault(a.webhook_id, set()).add(a.body)
    assert set(bodies) == set(ids)
    assert all(len(b) == 1 for b in bodies.values())  # a duplicate is the same event
    assert any(len(receiver.attempts(i)) > 1 for i in ids)  # the killed batch came again
    for rows in per_order:
        sequences = [a.sequence for a in receiver.arrivals if a.order_id == rows[0].order_id]
        assert sequences == sorted(sequences)
        assert set(sequences) == {1, 2}


async def _any_arrival(receiver: Receiver) -> bool:
    return bool(receiver.arrivals)


def _readme_block(after: str) -> str:
    """The first Python block of the README after the text ``after``."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start = readme.index("```python\n", readme.index(after)) + len("```python\n")
    return readme[start : readme.index("```", start)]


def test_the_readme_receivers_verify_what_the_relay_signs() -> None:
    """The README's receivers (the ``standardwebhooks`` package; plain hmac) accept the
    relay's signature, and refuse a changed body or an old timestamp."""
    body = b'{"type": "order.paid", "data": {"order_id": "s.1", "sequence": 2}}'
    headers = signing.headers_for(WEBHOOK_KEY, "evt_1", int(time.time()), body)
    stale = signing.headers_for(WEBHOOK_KEY, "evt_1", int(time.time()) - 600, body)
    plain: dict[str, Any] = {"FLASHSALE_WEBHOOK_SECRET": WEBHOOK_SECRET}
    exec(_readme_block("or with `hmac` alone:"), plain)
    assert plain["signed"](body, headers)
    assert not plain["signed"](body.replace(b"2", b"3"), headers)
    assert not plain["signed"](body, stale)

    pytest.importorskip("standardwebhooks")
    applied: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    receiver: dict[str, Any] = {
        "FLASHSALE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "seen_before": seen.__contains__,
        "remember": seen.add,
        "apply": lambda kind, data: applied.append((kind, data)),
    }
    exec(_readme_block("with the reference library"), receiver)
    assert receiver["receive"](body, headers) == 200
    assert receiver["receive"](body, headers) == 200  # a repeat, applied once
    assert applied == [("order.paid", {"order_id": "s.1", "sequence": 2})]
    assert receiver["receive"](body.replace(b"2", b"3"), headers) == 400
    assert receiver["receive"](body, stale) == 400


async def test_serve_runs_the_relay_in_a_process_of_its_own(
    settings: Settings, receiver: Receiver
) -> None:
    async with _serving(settings, receiver) as (base, sid, log), aiohttp.ClientSession() as http:
        shopper = {"Authorization": f"Bearer {issue_token(settings.token_secret, 'u1')}"}
        async with http.post(f"{base}/v1/sales/{sid}/buy", json={}, headers=shopper) as r:
            assert r.status == 201
            order_id = (await r.json())["order"]["order_id"]
        await wait_until(lambda: _arrived(receiver, order_id, 1), WAIT_S)
    assert "and an order events relay" in log[0]
    assert [a.event["type"] for a in receiver.arrivals if a.order_id == order_id] == [
        "order.reserved"
    ]


@contextlib.asynccontextmanager
async def _serving(
    settings: Settings, receiver: Receiver, *args: str, **env: str
) -> AsyncIterator[tuple[str, str, list[str]]]:
    """``flashsale serve`` relaying to ``receiver``, with a sale made and the receiver
    registered (the relay takes the events committed once it has seen it): (its base URL, the
    sale's id, and once it has stopped cleanly, its log)."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flashsale", "serve", "--port", str(port), *args,
        env=flashsale_env(settings, FLASHSALE_WEBHOOK_URLS=receiver.url,
                          FLASHSALE_WEBHOOK_SECRET=WEBHOOK_SECRET, **env),
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base, log = f"http://127.0.0.1:{port}", []
    try:
        async with aiohttp.ClientSession() as http:
            await wait_until(lambda: _healthy(http, base), WAIT_S)
            admin = {"Authorization": f"Bearer {settings.admin_token}"}
            async with http.post(f"{base}/v1/admin/sales", json=sale_spec(), headers=admin) as r:
                sid = (await r.json())["sale"]["sale_id"]
        await wait_until(lambda: _registered(settings.database_url, receiver.url), WAIT_S)
        yield base, sid, log
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    log.append(err.decode())


async def _healthy(http: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with http.get(f"{base}/healthz") as resp:
            return resp.status == 200
    except aiohttp.ClientConnectionError:
        return False


async def _registered(database_url: str, url: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return bool(
            await conn.fetchval("SELECT count(*) FROM webhook_receivers WHERE url = $1", url)
        )
    finally:
        await conn.close()


def test_webhook_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHSALE_WEBHOOK_URLS", "https://a.example/h, http://b.example:81/h,")
    with pytest.raises(SettingsError, match="needs FLASHSALE_WEBHOOK_SECRET"):
        Settings.from_env()
    monkeypatch.setenv("FLASHSALE_WEBHOOK_SECRET", "whsec_tooshort")
    with pytest.raises(SettingsError, match="FLASHSALE_WEBHOOK_SECRET"):
        Settings.from_env()
    monkeypatch.setenv("FLASHSALE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    monkeypatch.setenv("FLASHSALE_WEBHOOK_RETRY_BASE_S", "0.5")
    settings = Settings.from_env()
    assert settings.webhook_urls == ("https://a.example/h", "http://b.example:81/h")
    assert settings.webhook_key == WEBHOOK_KEY
    assert settings.webhook_retry_base_s == 0.5
    assert 1 <= settings.relay_processes <= 4  # one a core, up to four
    monkeypatch.setenv("FLASHSALE_RELAY_PROCESSES", "3")
    monkeypatch.setenv("FLASHSALE_WEBHOOK_BATCH_SIZE", "300")
    settings = Settings.from_env()
    assert (settings.relay_processes, settings.webhook_batch_size) == (3, 300)
    for name, bad in [("FLASHSALE_RELAY_PROCESSES", "0"), ("FLASHSALE_WEBHOOK_BATCH_SIZE", "0"),
                      ("FLASHSALE_RELAY_PROCESSES", "two")]:  # fmt: skip
        monkeypatch.setenv(name, bad)
        with pytest.raises(SettingsError, match=name):
            Settings.from_env()
        monkeypatch.delenv(name)
    for bad in ["ftp://a.example/h", "https://", "http://a.example:x/h", "a.example/h"]:
        monkeypatch.setenv("FLASHSALE_WEBHOOK_URLS", bad)
        with pytest.raises(SettingsError, match="not an http"):
            Settings.from_env()


def test_since_is_a_time_or_a_duration() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("1h30m", now) == now - timedelta(minutes=90)
    assert parse_since("2d", now) == now - timedelta(days=2)
    assert parse_since("2026-11-22T10:00:00Z", now) == datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert parse_since("2026-11-22T10:00:00", now) == datetime(2026, 11, 22, 10, tzinfo=UTC)
    for bad in ["", "yesterday", "1w", "-5m", "m"]:
        with pytest.raises(UsageError):
            parse_since(bad, now)


async def test_the_relay_needs_somewhere_to_deliver(settings: Settings) -> None:
    code, _, err = await run_flashsale(settings, "relay")
    assert code == 2
    assert "FLASHSALE_WEBHOOK_URLS is not set" in err


async def test_a_refund_for_an_order_we_never_had_is_delivered_too(
    service: Service, receiver: Receiver
) -> None:
    """A payment naming an order of a sale of ours that does not exist: no order, so no
    sequence; the event is keyed by the payment, and goes like any other."""
    sid = (await service.create_sale(price_cents=500))["sale_id"]
    pool = service.services.pool
    await receivers.register(pool, receiver.url)
    unknown = new_order_id(sid)
    for _ in range(2):  # the payment service sending it twice: one event
        paid = await service.pay(unknown, 500, "USD", payment_id="pay-unknown-1")
        assert paid.body["payment"]["reason"] == "order_not_found", paid.body
    services = service.services
    await OrderWriter(services.engine.redis, pool, services.engine.keys).drain()
    rows = await pool.fetch("SELECT event_id, sequence FROM outbox WHERE order_id = $1", unknown)
    assert [r["sequence"] for r in rows] == [None]
    async with running(pool, relay_config(receiver.url)):
        await _all_delivered(pool, receiver, [rows[0]["event_id"]])
    (event,) = [a.event for a in receiver.arrivals]
    assert event["type"] == "payment.refund_required"
    assert event["data"] == {
        "order_id": unknown, "sale_id": sid, "user_id": None, "sequence": None,
        "status": None, "quantity": None, "amount_cents": None, "currency": "USD",
        "created_at": None, "expires_at": None, "payment_id": "pay-unknown-1",
        "reason": "order_not_found", "payment_amount_cents": 500, "payment_currency": "USD",
    }  # fmt: skip


async def test_a_slow_receiver_holds_back_nobody_else(service: Service, receiver: Receiver) -> None:
    """While a batch waits on a receiver that does not answer, the relay holds no transaction
    open: a new event can be pulled at once (an open transaction would hold it back)."""

    async def hangs(arrival: Arrival, r: Receiver) -> int:
        await asyncio.sleep(8)
        return 200

    receiver.behaviour = hangs
    sid, _ = await _sale_with_events(service, receiver.url, 2, ("reserved",))
    pool = service.services.pool
    async with running(pool, relay_config(receiver.url, timeout_s=8)):
        await wait_until(lambda: _any_arrival(receiver), WAIT_S)
        start = Cursor(int(await pool.fetchval("SELECT max(txid)::text FROM outbox")) - 1)
        fresh = order_rows(sid, ["reserved"])
        await record(pool, fresh)
        (event_id,) = await event_ids(pool, fresh)

        async def pulled() -> bool:
            return event_id in {e.event_id for e in await read_after(pool, start, 1000)}

        await wait_until(pulled, 4.0)
