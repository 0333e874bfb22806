"""GET /metrics: guarded, counting what happened, per-sale numbers as the stats route gives
them, and ``serve``'s processes reported as one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from flashsale.auth import issue_token
from flashsale.metrics import registry
from flashsale.metrics.collect import OVERDUE_AFTER_S, UNIT_STATES, receiver_label
from flashsale.metrics.http import PUBLISHER
from flashsale.metrics.tally import REQUEST_BOUNDS
from flashsale.payments.simulator import signed_notification
from flashsale.settings import Settings
from flashsale.webhooks.signing import new_secret, parse_secret
from tests.booking_helpers import at, book, queued_sale
from tests.conftest import ServiceFactory
from tests.helpers import PAYMENT_SECRET, Service, flashsale_env, sale_spec
from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent
BUY = "/v1/sales/{sale_id}/buy"

Samples = list[tuple[str, dict[str, str], float]]


def parse(text: str) -> Samples:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(v for n, found, v in samples if n == name and labels.items() <= found.items())


async def scrape(service: Service) -> Samples:
    reply = await service.client.get("/metrics", headers=service.admin_headers)
    assert reply.status == 200, await reply.text()
    return parse(await reply.text())


# --- the endpoint -----------------------------------------------------------------------------


async def test_metrics_take_the_admin_token(make_service: ServiceFactory) -> None:
    service = await make_service()
    bare = await service.call("GET", "/metrics")
    assert bare.status == 401
    assert bare.body["error"] == "unauthorized"
    shopper = await service.call("GET", "/metrics", headers=service.auth("alice"))
    assert shopper.status == 401
    reply = await service.client.get("/metrics", headers=service.admin_headers)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = parse(await reply.text())
    assert value(samples, "flashsale_redis_up") == 1
    assert value(samples, "flashsale_postgres_up") == 1


async def test_metrics_can_be_public(make_service: ServiceFactory) -> None:
    service = await make_service(metrics_public=True)
    reply = await service.client.get("/metrics")
    assert reply.status == 200
    assert "flashsale_build_info" in await reply.text()


async def test_openmetrics_when_the_scraper_asks(service: Service) -> None:
    reply = await service.client.get(
        "/metrics",
        headers={**service.admin_headers, "Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await reply.text()).rstrip().endswith("# EOF")


async def test_metrics_switched_off(make_service: ServiceFactory) -> None:
    service = await make_service(metrics=False)
    reply = await service.client.get("/metrics", headers=service.admin_headers)
    assert reply.status == 404
    assert PUBLISHER not in service.client.app  # type: ignore[operator]


# --- counters -----------------------------------------------------------------------------------


async def test_buys_are_counted_by_outcome(service: Service) -> None:
    before = await scrape(service)
    sale = (await service.create_sale(stock=2, per_user_limit=1))["sale_id"]
    limited = (await service.create_sale(stock=50, per_user_limit=50, rate_per_user=0.01,
                                         burst_per_user=1))["sale_id"]  # fmt: skip
    later = (await service.create_sale(
        starts_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        ends_at=(datetime.now(UTC) + timedelta(hours=2)).isoformat(),
    ))["sale_id"]  # fmt: skip
    statuses = [
        (await service.buy(sale, "u1", key="k1")).status,  # reserved
        (await service.buy(sale, "u1", key="k1")).status,  # replayed
        (await service.buy(sale, "u1")).status,  # limit_reached
        (await service.buy(sale, "u2")).status,  # reserved
        (await service.buy(sale, "u3")).status,  # sold_out
        (await service.buy(limited, "u4")).status,  # reserved
        (await service.buy(limited, "u4")).status,  # rate_limited
        (await service.buy(later, "u5")).status,  # sale_not_open
        (await service.buy(sale, "u6", {"quantity": "two"})).status,  # invalid_request
        (await service.buy("no-such-sale", "u7")).status,  # sale_not_found
    ]
    assert statuses == [201, 201, 409, 201, 409, 201, 429, 409, 400, 404]
    after = await scrape(service)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert {
        outcome: moved("flashsale_buys_total", outcome=outcome)
        for outcome in ("reserved", "replayed", "limit_reached", "sold_out", "rate_limited",
                        "sale_not_open", "invalid_request", "sale_not_found", "queued")
    } == {
        "reserved": 3, "replayed": 1, "limit_reached": 1, "sold_out": 1, "rate_limited": 1,
        "sale_not_open": 1, "invalid_request": 1, "sale_not_found": 1, "queued": 0,
    }  # fmt: skip
    by_status = {
        status: moved("flashsale_http_requests_total", method="POST", route=BUY, status=status)
        for status in ("201", "400", "404", "409", "429")
    }
    assert by_status == {"201": 4, "400": 1, "404": 1, "409": 3, "429": 1}
    # one observation per request, in the buy route's histogram
    count = "flashsale_http_request_duration_seconds_count"
    assert moved(count, method="POST", route=BUY) == len(statuses)
    assert moved("flashsale_http_request_duration_seconds_bucket", route=BUY, le="+Inf") == 10
    # the hot path's Redis calls went in batches, each observed once
    batches = moved("flashsale_redis_batch_duration_seconds_count")
    assert 1 <= batches <= moved("flashsale_redis_batch_commands_total")


async def test_queued_buys_are_counted(service: Service) -> None:
    before = await scrape(service)
    # booking stays open long enough for a busy machine to book both
    sale, opens_at = await queued_sale(service, opens_in_s=2.0, stock=1, admission_ratio=1.0)
    for user in ("a", "b"):
        assert (await book(service, sale, user)).status == 201
    await asyncio.sleep(max(0.0, opens_at - time.monotonic()) + 0.1)
    assert (await service.buy(sale, "b")).status == 202  # behind "a", whose place it is
    after = await scrape(service)
    queued = value(after, "flashsale_buys_total", outcome="queued")
    assert queued - value(before, "flashsale_buys_total", outcome="queued") == 1


async def test_labels_are_templates_and_bounded(service: Service) -> None:
    sale = (await service.create_sale(sale_id="label-check", stock=3))["sale_id"]
    assert (await service.buy(sale, "someone-1")).status == 201
    assert (await service.call("GET", "/no/such/route/x-123")).status == 404
    assert (await service.call("PROPFIND", f"/v1/sales/{sale}/buy")).status == 405
    reply = await service.client.get("/metrics", headers=service.admin_headers)
    text = await reply.text()
    http = [line for line in text.splitlines() if line.startswith("flashsale_http_")]
    assert not any("label-check" in line or "someone-1" in line for line in http)
    assert not any("x-123" in line or "PROPFIND" in line for line in text.splitlines())
    samples = parse(text)
    assert value(samples, "flashsale_http_requests_total", route=BUY, status="201") >= 1
    assert value(samples, "flashsale_http_requests_total", route="unmatched", status="404") >= 1
    other = value(samples, "flashsale_http_requests_total", method="other", status="405")
    assert other >= 1


async def test_payments_are_counted_once_by_outcome(service: Service) -> None:
    before = await scrape(service)
    sale = (await service.create_sale(stock=5, per_user_limit=1))["sale_id"]
    first = (await service.buy(sale, "p1")).body["order"]["order_id"]
    second = (await service.buy(sale, "p2")).body["order"]["order_id"]
    paid = await service.pay(first, webhook_id="wh-1")
    assert paid.body["payment"]["outcome"] == "paid"
    again = await service.pay(first, webhook_id="wh-1")  # the same notification: no decision
    assert again.body["payment"] == paid.body["payment"]
    wrong = await service.pay(second, amount_cents=1)
    assert wrong.body["payment"]["reason"] == "amount_mismatch"
    after = await scrape(service)

    def moved(**labels: str) -> float:
        name = "flashsale_payments_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(outcome="paid", reason="none") == 1
    assert moved(outcome="refund_required", reason="amount_mismatch") == 1
    assert moved() == 2


async def test_sweeper_and_writer_totals_are_published(service: Service) -> None:
    before = await scrape(service)
    sale = (await service.create_sale(stock=3, reservation_ttl_s=1))["sale_id"]
    assert (await service.buy(sale, "s1")).status == 201
    await service.wait_for_postgres(sale)
    deadline = time.monotonic() + 15
    while True:  # the sweeper returns the unit a second later, and the writer writes that
        after = await scrape(service)
        expired = value(after, "flashsale_sweeper_expired_reservations_total") - value(
            before, "flashsale_sweeper_expired_reservations_total"
        )
        written = value(after, "flashsale_writer_events_written_total") - value(
            before, "flashsale_writer_events_written_total"
        )
        if (expired >= 1 and written >= 2) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert expired == 1
    assert written >= 2  # the reservation and its expiry
    assert value(after, "flashsale_sale_expired_units_total", sale_id=sale) == 1
    pool = value(after, "flashsale_postgres_pool_connections")
    assert 1 <= pool <= value(after, "flashsale_postgres_pool_max_connections")


def test_many_observations_at_once_equal_one_each() -> None:
    """The publisher adds a second's observations to a histogram in one go: the result must be
    what observing each would give."""
    observed = [0.0002, 0.0005, 0.003, 0.003, 0.2, 0.7, 12.0, 10.0]
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("d_seconds", "d", ["route"], buckets=REQUEST_BOUNDS, registry=one_by_one)
    h2 = Histogram("d_seconds", "d", ["route"], buckets=REQUEST_BOUNDS, registry=at_once)
    for v in observed:
        h1.labels("r").observe(v)
    from flashsale.metrics.tally import Observations

    tally = Observations(REQUEST_BOUNDS)
    for v in observed:
        tally.observe(v)
    registry.add_observations(h2.labels("r"), *tally.take())

    def without_created(r: CollectorRegistry) -> list[str]:
        return [line for line in generate_latest(r).decode().splitlines() if "_created" not in line]

    assert without_created(one_by_one) == without_created(at_once)
    assert tally.take() == ([0] * len(REQUEST_BOUNDS), 0.0)


# --- per-sale numbers, read from Redis when scraped ---------------------------------------------


async def test_sale_numbers_match_the_stats_route(service: Service) -> None:
    sale = (await service.create_sale(stock=10, fcode_stock=2, per_user_limit=2))["sale_id"]
    orders = [(await service.buy(sale, f"g{i}", {"quantity": 2})).body["order"]["order_id"]
              for i in range(3)]  # fmt: skip
    assert (await service.pay(orders[0])).body["payment"]["outcome"] == "paid"
    assert (await service.order_action(orders[1], "g1", "cancel")).status == 200
    stats = await service.wait_for_postgres(sale)
    samples = await scrape(service)

    def of_sale(name: str, **labels: str) -> float:
        return value(samples, name, sale_id=sale, **labels)

    assert of_sale("flashsale_sale_stock_units") == stats["stock"] == 10
    for state in ("available", "reserved", "paid"):
        assert of_sale("flashsale_sale_units", state=state) == stats[state], state
    assert of_sale("flashsale_sale_units", state="fcode_available") == 2
    assert stats.get("fcode_available", 2) == 2
    assert sum(of_sale("flashsale_sale_units", state=s) for s in UNIT_STATES) == stats["stock"]
    for name in ("expired", "cancelled", "paid_late", "fcode_released"):
        assert of_sale(f"flashsale_sale_{name}_units_total") == stats.get(name, 0), name
    assert of_sale("flashsale_sale_cancelled_units_total") == 2
    assert of_sale("flashsale_sale_dead_letters") == stats["dead_letters"] == 0
    assert of_sale("flashsale_writer_backlog_events") == 0  # all in PostgreSQL
    assert of_sale("flashsale_writer_lag_seconds") == 0
    assert of_sale("flashsale_sale_reservations_overdue") == 0


async def test_queue_numbers_match_the_stats_route(service: Service) -> None:
    sale, _ = await queued_sale(service, opens_in_s=3600, ends_at=at(7200), stock=5)
    for user in ("q1", "q2", "q3"):
        assert (await book(service, sale, user)).status == 201
    stats = await service.stats(sale)
    samples = await scrape(service)
    assert value(samples, "flashsale_sale_bookings", sale_id=sale) == stats["bookings"] == 3
    admitted = value(samples, "flashsale_sale_queue_shoppers", sale_id=sale, state="admitted")
    waiting = value(samples, "flashsale_sale_queue_shoppers", sale_id=sale, state="waiting")
    assert (admitted, waiting) == (stats["admitted"], stats["waiting"]) == (0, 3)


async def test_what_needs_attention_shows(make_service: ServiceFactory, redis: Redis) -> None:
    """Events not reaching PostgreSQL, a reservation left past its deadline, a dead letter:
    with the writer and the sweeper stopped, each shows in its gauge."""
    service = await make_service(run_writer=False, run_sweeper=False)
    sale = (await service.create_sale(stock=5))["sale_id"]
    assert (await service.buy(sale, "w1")).status == 201
    assert (await service.buy(sale, "w2")).status == 201
    k = service.services.engine.keys.sale(sale)
    seconds, _ = await redis.time()
    await redis.zadd(k.deadlines, {f"{sale}.stale": (seconds - OVERDUE_AFTER_S - 5) * 1000})
    await redis.xadd(k.dead_letters, {"dead_reason": "refused", "order_id": "x"})
    await asyncio.sleep(1.1)
    samples = await scrape(service)
    assert value(samples, "flashsale_writer_backlog_events", sale_id=sale) == 2
    assert value(samples, "flashsale_writer_lag_seconds", sale_id=sale) >= 1.0
    assert value(samples, "flashsale_sale_reservations_overdue", sale_id=sale) == 1
    assert value(samples, "flashsale_sale_dead_letters", sale_id=sale) == 1


async def test_redis_away_is_reported_not_failed(make_service: ServiceFactory) -> None:
    port = free_port()  # claimed: nothing listens here
    service = await make_service(
        redis_url=f"redis://127.0.0.1:{port}/0", run_writer=False, run_sweeper=False
    )
    started = time.monotonic()
    samples = await scrape(service)
    assert time.monotonic() - started < 10
    assert value(samples, "flashsale_redis_up") == 0
    assert value(samples, "flashsale_postgres_up") == 1
    assert not [n for n, _, _ in samples if n.startswith("flashsale_sale_")]


def test_receiver_labels_keep_no_secrets() -> None:
    assert receiver_label("https://u:pw@shop.example:8443/hook?token=s3cret#x") == (
        "https://shop.example:8443/hook"
    )
    assert receiver_label("http://[::1]/in") == "http://[::1]/in"


# --- serve: several processes, one set of numbers -----------------------------------------------


@dataclass
class Served:
    base: str
    settings: Settings
    proc: asyncio.subprocess.Process
    admin: dict[str, str]

    async def scrape(self, http: aiohttp.ClientSession) -> tuple[str, Samples]:
        async with http.get(f"{self.base}/metrics", headers=self.admin) as resp:
            assert resp.status == 200, await resp.text()
            text = await resp.text()
        return text, parse(text)

    async def wait_for(
        self, http: aiohttp.ClientSession, what: str, check: Any, timeout_s: float = 20.0
    ) -> Samples:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                _, samples = await self.scrape(http)
            except aiohttp.ClientOSError:
                # a kept-alive connection to a worker the test killed: the next one is new
                assert time.monotonic() < deadline, f"{what}: no scrape answered"
                await asyncio.sleep(0.2)
                continue
            if check(samples):
                return samples
            assert time.monotonic() < deadline, f"{what}: never seen in {samples}"
            await asyncio.sleep(0.2)


@pytest.fixture
async def served(settings: Settings, tmp_path: Path) -> AsyncIterator[Served]:
    """``flashsale serve --workers 2`` with its order writer and a relay (to a receiver that is
    not there), its metrics files in a directory of the test's."""
    port = free_port()
    env = flashsale_env(
        settings,
        FLASHSALE_WEBHOOK_URLS=f"http://127.0.0.1:{free_port()}/events?key=hidden",
        FLASHSALE_WEBHOOK_SECRET=new_secret(),
        FLASHSALE_RESTART_DELAY_S="0.2",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    # a file left by an earlier run, which serve must clear (read, it would fail every scrape)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "counter_1.db").write_bytes(b"left by an earlier run")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flashsale", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "2", env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(f"{base}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "serve did not start"
                await asyncio.sleep(0.1)
        yield Served(base, settings, proc, {"Authorization": f"Bearer {settings.admin_token}"})
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert b"Traceback" not in err, err.decode()[-3000:]


async def test_serve_reports_its_workers_and_writer_as_one(served: Served) -> None:
    settings = served.settings
    async with aiohttp.ClientSession() as http:
        await asyncio.sleep(1.5)  # every worker has published what it counted so far
        _, before = await served.scrape(http)
        pids: dict[int, int] = {}
        for _ in range(400):  # a new connection each time: the kernel spreads them
            async with http.get(f"{served.base}/healthz",
                                headers={"Connection": "close"}) as resp:  # fmt: skip
                pid = (await resp.json())["pid"]
                pids[pid] = pids.get(pid, 0) + 1
            if len(pids) == 2 and sum(pids.values()) >= 20:
                break
        assert len(pids) == 2, pids
        total = value(before, "flashsale_http_requests_total", route="/healthz") + sum(
            pids.values()
        )

        def healthz(samples: Samples) -> float:
            return value(samples, "flashsale_http_requests_total", route="/healthz")

        await served.wait_for(http, "both workers' requests", lambda s: healthz(s) == total)

        # the order writer, a process of its own, reports what it wrote
        async with http.post(f"{served.base}/v1/admin/sales", json=sale_spec(stock=3),
                             headers=served.admin) as resp:  # fmt: skip
            sale_id = (await resp.json())["sale"]["sale_id"]
        shopper = {"Authorization": f"Bearer {issue_token(settings.token_secret, 'm1')}"}
        async with http.post(f"{served.base}/v1/sales/{sale_id}/buy", json={},
                             headers=shopper) as resp:  # fmt: skip
            assert resp.status == 201
        samples = await served.wait_for(
            http, "the writer's events",
            lambda s: value(s, "flashsale_writer_events_written_total") >= 1,
        )  # fmt: skip
        assert value(samples, "flashsale_writer_lag_seconds", sale_id=sale_id) < 5
        # and so does the relay
        assert "flashsale_relay_deliveries_total" in {name for name, _, _ in samples}
        assert value(samples, "flashsale_serve_restarts_total", process="worker") == 0

        # a worker killed outright: its counts stay, the restart is counted
        victim = next(iter(pids))
        os.kill(victim, signal.SIGKILL)
        samples = await served.wait_for(
            http, "the restart",
            lambda s: value(s, "flashsale_serve_restarts_total", process="worker") == 1,
        )  # fmt: skip
        assert healthz(samples) == total


def _names_in_use() -> set[str]:
    """Every flashsale_* name the dashboard and the alert rules read."""
    dashboard = (REPO / "deploy" / "grafana" / "flashsale.json").read_text()
    json.loads(dashboard)  # it parses
    alerts = (REPO / "deploy" / "prometheus" / "alerts.yml").read_text()
    return set(re.findall(r"\bflashsale_[a-z0-9_]+", dashboard + alerts))


def test_dashboard_parses_and_has_panels() -> None:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "flashsale.json").read_text())
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    assert len(panels) >= 8
    for panel in panels:
        assert panel.get("targets"), panel.get("title")
        for target in panel["targets"]:
            assert target["expr"].strip(), panel.get("title")
    assert len(_names_in_use()) >= 15


async def test_every_metric_the_dashboard_and_alerts_read_is_served(served: Served) -> None:
    settings = served.settings
    names = _names_in_use()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.base}/v1/admin/sales", json=sale_spec(stock=5),
                             headers=served.admin) as resp:  # fmt: skip
            sale_id = (await resp.json())["sale"]["sale_id"]
        for user in ("n1", "n2", "n1"):
            token = issue_token(settings.token_secret, user)
            async with http.post(f"{served.base}/v1/sales/{sale_id}/buy", json={},
                                 headers={"Authorization": f"Bearer {token}"}) as resp:  # fmt: skip
                body = await resp.json()
                order = body.get("order")
        assert order is None  # n1's second buy: limit_reached
        async with http.get(f"{served.base}/v1/admin/sales/{sale_id}/stats",
                            headers=served.admin) as resp:  # fmt: skip
            assert (await resp.json())["stats"]["reserved"] == 2
        token = issue_token(settings.token_secret, "n3")
        async with http.post(f"{served.base}/v1/sales/{sale_id}/buy", json={},
                             headers={"Authorization": f"Bearer {token}"}) as resp:  # fmt: skip
            first = (await resp.json())["order"]
        body, headers = signed_notification(
            parse_secret(PAYMENT_SECRET), first["order_id"], first["amount_cents"],
            first["currency"],
        )  # fmt: skip
        async with http.post(f"{served.base}/v1/payments/events", data=body,
                             headers=headers) as resp:  # fmt: skip
            assert (await resp.json())["payment"]["outcome"] == "paid"
        # a booking queue
        now = datetime.now(UTC)
        spec = sale_spec(
            stock=5, starts_at=(now + timedelta(hours=1)).isoformat(),
            ends_at=(now + timedelta(hours=2)).isoformat(),
            booking_opens_at=(now - timedelta(minutes=1)).isoformat(),
            booking_closes_at=(now + timedelta(hours=1)).isoformat(), admission="booking_order",
        )  # fmt: skip
        async with http.post(f"{served.base}/v1/admin/sales", json=spec,
                             headers=served.admin) as resp:  # fmt: skip
            queued = (await resp.json())["sale"]["sale_id"]
        async with http.post(f"{served.base}/v1/sales/{queued}/bookings", json={},
                             headers={"Authorization": f"Bearer {token}"}) as resp:  # fmt: skip
            assert resp.status == 201

        def served_names(samples: Samples) -> set[str]:
            return {n for n, _, _ in samples}

        samples = await served.wait_for(http, "every name", lambda s: names <= served_names(s))
        text, _ = await served.scrape(http)
    assert "hidden" not in text  # the receiver's query string is no label
    assert value(samples, "flashsale_outbox_backlog_events") >= 0
    assert value(samples, "flashsale_sale_queue_shoppers", sale_id=queued, state="waiting") == 1


def test_metrics_directory_starts_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's directory is emptied of metrics files (only those); without one, a fresh
    directory is made, and those of serve processes that were killed outright are removed."""
    from flashsale.metrics import multiprocess

    given = tmp_path / "given"
    given.mkdir()
    (given / "counter_12.db").write_bytes(b"x")
    (given / "notes.txt").write_text("kept")
    monkeypatch.setenv(multiprocess.ENV, str(given))
    directory = multiprocess.prepare()
    assert (directory.path, directory.owned) == (str(given), False)
    assert sorted(p.name for p in given.iterdir()) == ["notes.txt"]

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.delenv(multiprocess.ENV)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    abandoned = tmp_path / f"flashsale-metrics-{ended.stdout.strip()}-abc"
    alive = tmp_path / f"flashsale-metrics-{os.getpid()}-def"
    abandoned.mkdir()
    alive.mkdir()
    directory = multiprocess.prepare()
    assert directory.owned
    assert os.environ[multiprocess.ENV] == directory.path
    assert Path(directory.path).parent == tmp_path
    assert not abandoned.exists()
    assert alive.exists()
    multiprocess.remove(directory)
    assert not Path(directory.path).exists()
