"""What operators and scripts touch: the CLI, health, stats, key layout, sale creation."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg
import pytest
from redis.asyncio import Redis

from flashsale import __version__
from flashsale.handoff_checks import EVENTS, PAID_ONCE, REASONS, UNITS
from flashsale.http.admin import parse_sale
from flashsale.settings import Settings
from flashsale.store.sales import insert_sale
from tests.helpers import Service, flashsale_env, run_flashsale, sale_spec, whole_machine
from tests.servers import free_port


def _flashsale(*args: str) -> list[str]:
    return [sys.executable, "-m", "flashsale", *args]


async def test_keys_of_a_sale_share_one_hash_tag(service: Service, redis: Redis) -> None:
    sale = await service.create_sale(stock=5, per_user_limit=2)
    sale_id = sale["sale_id"]
    reply = await service.buy(sale_id, "u:1", {"quantity": 2}, key="k")
    paid = await service.pay(reply.body["order"]["order_id"])
    assert paid.body["payment"]["outcome"] == "paid"
    keys = [
        k async for k in redis.scan_iter(match=f"{service.settings.key_prefix}:*", count=10_000)
    ]
    # the keys of the deployment, not of a sale: the index of sales, the reporter's lease
    shared = {f"{service.settings.key_prefix}:{name}" for name in ("sales", "reporter")}
    sale_keys = [k for k in keys if k not in shared]
    # sale, holders, deadlines-or-events, order, idempotency, payment, webhook-id
    assert len(sale_keys) >= 7
    for key in sale_keys:
        assert f"{{{sale_id}}}" in key
        assert key.count("{") == 1


async def test_stats_count_units_and_postgres_orders(service: Service) -> None:
    sale = await service.create_sale(stock=4, per_user_limit=1)
    ids = [
        (await service.buy(sale["sale_id"], f"u{i}")).body["order"]["order_id"] for i in range(3)
    ]
    assert (await service.pay(ids[0])).body["payment"]["outcome"] == "paid"
    await service.order_action(ids[1], "u1", "cancel")
    stats = await service.wait_for_postgres(sale["sale_id"])
    assert {k: stats[k] for k in ("stock", "available", "reserved", "paid", "cancelled")} == {
        "stock": 4, "available": 2, "reserved": 1, "paid": 1, "cancelled": 1,
    }  # fmt: skip
    assert stats["orders_in_postgres"] == {
        "reserved": 1, "paid": 1, "expired": 0, "cancelled": 1, "total": 3,
    }  # fmt: skip


async def test_interrupted_create_is_completed_by_repeating_it(service: Service) -> None:
    spec = sale_spec(sale_id="half-made", stock=7)
    # the PostgreSQL half of a create whose Redis half never happened
    assert await insert_sale(service.services.pool, parse_sale(dict(spec)))
    assert (await service.call("GET", "/v1/sales/half-made")).status == 404
    done = await service.call("POST", "/v1/admin/sales", json=spec, headers=service.admin_headers)
    assert done.status == 201
    assert done.body["sale"]["available"] == 7
    again = await service.call("POST", "/v1/admin/sales", json=spec, headers=service.admin_headers)
    assert again.status == 409
    assert again.body["error"] == "sale_exists"


async def test_healthz(service: Service) -> None:
    reply = await service.call("GET", "/healthz")
    assert reply.status == 200
    assert reply.body == {
        "status": "ok", "redis": "ok", "postgres": "ok", "pid": os.getpid(),
        "version": __version__,
    }  # fmt: skip


async def test_token_command_prints_an_accepted_token(service: Service, settings: Settings) -> None:
    sale = await service.create_sale(stock=1)
    proc = await asyncio.create_subprocess_exec(
        *_flashsale("token", "cli-user"),
        env=flashsale_env(settings),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await proc.communicate()
    assert proc.returncode == 0
    headers = {"Authorization": f"Bearer {stdout.decode().strip()}"}
    reply = await service.call("POST", f"/v1/sales/{sale['sale_id']}/buy", json={}, headers=headers)
    assert reply.status == 201
    assert reply.body["order"]["user_id"] == "cli-user"


def test_token_command_refuses_without_a_secret(settings: Settings) -> None:
    env = flashsale_env(settings)
    del env["FLASHSALE_TOKEN_SECRET"]
    out = subprocess.run(_flashsale("token", "x"), env=env, capture_output=True, text=True)
    assert out.returncode == 2
    assert "FLASHSALE_TOKEN_SECRET" in out.stderr


@pytest.mark.parametrize("name", ["FLASHSALE_TOKEN_SECRET", "FLASHSALE_ADMIN_TOKEN"])
@pytest.mark.parametrize(
    ("value", "says"),
    [("too-short", "32 bytes"), ("x" * 31, "32 bytes"), (" " + "x" * 40, "spaces"),
     ("x" * 40 + "\n", "line breaks"), ("\t" + "x" * 40, "spaces")],
)  # fmt: skip
def test_weak_or_padded_secrets_are_refused_at_start(
    settings: Settings, name: str, value: str, says: str
) -> None:
    env = flashsale_env(settings, **{name: value})
    for command in (("serve", "--single-process", "--port", "1"), ("token", "x")):
        out = subprocess.run(_flashsale(*command), env=env, capture_output=True, text=True)
        assert out.returncode == 2, (command, out)
        assert name in out.stderr, out.stderr
        assert says in out.stderr, out.stderr
        assert value.strip() not in out.stderr  # a secret is never echoed


async def test_serve_applies_the_schema_and_answers(settings: Settings) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *_flashsale("serve", "--host", "127.0.0.1", "--port", str(port)),
        env=flashsale_env(settings),
    )
    try:
        body: dict[str, Any] = {}
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        body = await resp.json()
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        assert body.get("status") == "ok", body
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0, "SIGTERM is a clean shutdown"


@whole_machine
@pytest.mark.timeout(120)
def test_demo_runs_a_whole_sale(settings: Settings) -> None:
    # a payment service that misbehaves often: each kind of misbehaviour all but surely occurs
    shares = [f"--{kind}-share=0.2" for kind in ("late", "repeat", "paid-again", "wrong-amount")]
    out = subprocess.run(
        _flashsale("demo", "--stock", "100", "--shoppers", "600", "--concurrency", "50",
                   "--reservation-ttl", "2", *shares),
        env=flashsale_env(settings), capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verdict: all invariants hold" in out.stdout
    # every unit sold, some more than once (cancelled or expired, then bought by the next in
    # the opening window's queue): PostgreSQL holds every order answered 201
    reserved = re.search(r"^answers: .*\breserved (\d+)", out.stdout, re.MULTILINE)
    orders = re.search(r"^orders in PostgreSQL: (\d+) \((\d+) paid", out.stdout, re.MULTILINE)
    assert reserved is not None, out.stdout
    assert orders is not None, out.stdout
    assert int(orders[1]) == int(reserved[1]) >= 100
    assert int(orders[2]) == 100
    assert "queued (202)" in out.stdout  # the crowd at the opening went through the window
    payments = re.search(r"^payment service: .*$", out.stdout, re.MULTILINE)
    assert payments is not None, out.stdout
    for kind in ("on_time", "late", "repeated", "paid_again", "wrong_amount", "amount_mismatch"):
        assert kind in payments[0]
    assert re.search(r"^order events: [1-9][\d,]* deliveries to the receiver", out.stdout, re.M)
    for check in (PAID_ONCE, REASONS, EVENTS, UNITS):
        assert f"check: {check}: ok (" in out.stdout


@whole_machine
@pytest.mark.timeout(120)
def test_demo_runs_a_launch_through_the_booking_queue(settings: Settings) -> None:
    out = subprocess.run(
        _flashsale("demo", "--admission", "booking_order", "--stock", "50", "--shoppers", "400",
                   "--concurrency", "50", "--window", "1"),
        env=flashsale_env(settings), capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verdict: all invariants hold" in out.stdout
    assert f"check: {EVENTS}: ok (" in out.stdout
    assert "400 bookings taken" in out.stdout
    assert "all paid after" in out.stdout
    # the front of the queue won (the first few may be no-shows), not the whole crowd
    ranks = re.search(r"winners' queue ranks: (\d+) to (\d+)", out.stdout)
    assert ranks is not None, out.stdout
    assert int(ranks[1]) <= 5
    assert int(ranks[2]) < 200


async def test_serve_workers_share_one_port(settings: Settings) -> None:
    """Two workers on one port, in a database that does not exist yet (both race to create
    it); both answer, and SIGTERM stops the whole group cleanly."""
    fresh = settings.database_url.rsplit("/", 1)[0] + f"/{settings.key_prefix}_workers"
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *_flashsale("serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"),
        env=flashsale_env(replace(settings, database_url=fresh)),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while len(pids) < 2 and time.monotonic() < deadline:
                try:  # a new connection each time: the kernel spreads them over the workers
                    async with http.get(f"http://127.0.0.1:{port}/healthz",
                                        headers={"Connection": "close"}) as resp:  # fmt: skip
                        if resp.status == 200:
                            pids.add((await resp.json())["pid"])
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        assert len(pids) == 2, pids
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        server = settings.database_url.rsplit("/", 1)[0] + "/postgres"
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{fresh.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            await conn.close()
    assert proc.returncode == 0, err.decode()
    assert b"starting another" not in err, err.decode()


async def test_serve_writes_orders_from_its_own_writer_process(settings: Settings) -> None:
    """``serve`` = an HTTP worker and an order writer, each a process; the writer carries a buy
    to PostgreSQL, and a supervisor killed outright (SIGKILL) takes both children with it."""
    import psutil

    from flashsale.auth import issue_token

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        *_flashsale("serve", "--host", "127.0.0.1", "--port", str(port)),
        env=flashsale_env(settings), stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    children: list[psutil.Process] = []
    try:
        async with aiohttp.ClientSession() as http:
            worker_pid = None
            deadline = time.monotonic() + 30
            while worker_pid is None and time.monotonic() < deadline:
                try:
                    async with http.get(f"{base}/healthz") as resp:
                        worker_pid = (await resp.json())["pid"]
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            children = psutil.Process(proc.pid).children()
            # the HTTP worker and the order writer (besides multiprocessing's resource tracker)
            spawned = [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]
            assert worker_pid in {c.pid for c in spawned}
            assert len(spawned) == 2, spawned
            admin = {"Authorization": f"Bearer {settings.admin_token}"}
            async with http.post(f"{base}/v1/admin/sales", json=sale_spec(stock=3),
                                 headers=admin) as resp:  # fmt: skip
                assert resp.status == 201
                sale_id = (await resp.json())["sale"]["sale_id"]
            shopper = {"Authorization": f"Bearer {issue_token(settings.token_secret, 'w:1')}"}
            async with http.post(f"{base}/v1/sales/{sale_id}/buy", json={},
                                 headers=shopper) as resp:  # fmt: skip
                assert resp.status == 201
                order_id = (await resp.json())["order"]["order_id"]
        conn = await asyncpg.connect(settings.database_url)
        try:
            row = None
            deadline = time.monotonic() + 10
            while row is None and time.monotonic() < deadline:
                row = await conn.fetchrow("SELECT user_id FROM orders WHERE order_id = $1",
                                          order_id)  # fmt: skip
                await asyncio.sleep(0.1)
            assert row is not None
            assert row["user_id"] == "w:1"
        finally:
            await conn.close()
    finally:
        proc.kill()
        await proc.wait()
        _, alive = psutil.wait_procs(children, timeout=15)
        for orphan in alive:
            orphan.kill()
    assert not alive, f"children outlived their supervisor: {alive}"


async def test_token_command_mints_many_fast(
    service: Service, settings: Settings, tmp_path: Any
) -> None:
    import csv

    import jwt

    sale = await service.create_sale(stock=3)
    out = tmp_path / "tokens.csv"
    started = time.monotonic()
    code, _, err = await run_flashsale(settings, "token", "--count", "20000", "--out", str(out))
    assert code == 0, err
    assert time.monotonic() - started < 10  # one process: not 20,000 of them (0.19 s each)
    assert "20,000 token(s) written to" in err
    assert out.stat().st_mode & 0o777 == 0o600  # a token is a shopper's key
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20000
    assert (rows[0]["user_id"], rows[-1]["user_id"]) == ("user-1", "user-20000")
    claims = jwt.decode(rows[7]["token"], settings.token_secret, algorithms=["HS256"])
    assert (claims["sub"], claims["exp"] - claims["iat"]) == ("user-8", 3600)
    for row in rows[:2]:
        headers = {"Authorization": f"Bearer {row['token']}"}
        bought = await service.call("POST", f"/v1/sales/{sale['sale_id']}/buy", json={},
                                    headers=headers)  # fmt: skip
        assert (bought.status, bought.body["order"]["user_id"]) == (201, row["user_id"])

    users = tmp_path / "users.csv"
    users.write_text("user_id,email\nalice,a@example.com\nbob,b@example.com\n")
    code, stdout, err = await run_flashsale(settings, "token", "--users", str(users),
                                            "--prefix", "x", "--ttl", "60")  # fmt: skip
    assert code == 0, err
    listed = list(csv.DictReader(stdout.splitlines()))
    assert [r["user_id"] for r in listed] == ["alice", "bob"]
    bob = jwt.decode(listed[1]["token"], settings.token_secret, algorithms=["HS256"])
    assert bob["sub"] == "bob"
    for bad in (["--count", "0"], ["--count", "2", "--prefix", " space"], ["a", "--count", "2"],
                ["--users", str(tmp_path / "missing.csv")], []):  # fmt: skip
        code, _, err = await run_flashsale(settings, "token", *bad)
        assert code == 2, (bad, err)


def test_serve_help_shows_the_defaults() -> None:
    out = subprocess.run(_flashsale("serve", "--help"), capture_output=True, text=True)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for words in ("(default: 127.0.0.1)", "(default: 8080)", "(default: 1)",
                  "FLASHSALE_ADMIN_TOKEN", "noeviction"):  # fmt: skip
        assert words in text, words
