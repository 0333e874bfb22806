"""Small steps of scripts/bench-buy that are easier in Python than in bash.

Run with the project's venv: ``.venv/bin/python scripts/bench/helper.py COMMAND ...``.
scripts/bench-bookings imports free_port, wait_http, write_tokens and cpu_seconds from here.

    free-port                                   print a free TCP port on 127.0.0.1
    wait-http URL SECONDS                       wait until URL answers 200 (exit 1 on timeout)
    create-sale BASE ADMIN_TOKEN SALE_ID STOCK  create a sale open now, per_user_limit 1
    mint-tokens SECRET COUNT FILE TTL_S         write COUNT shopper tokens, one a line
    drain BASE ADMIN_TOKEN SALE_ID SECONDS      wait for the writer to carry every order to
                                                PostgreSQL; print what it saw
    cleanup-redis REDIS_URL PREFIX              SCAN MATCH PREFIX:* and DEL (never FLUSH)
    redis-pid REDIS_URL                         the Redis server's pid if it runs on this
                                                machine, else nothing
    cpu-seconds PID...                          user + system CPU seconds the PIDs have used
    box-cpu-seconds                             CPU seconds the whole machine has been busy
                                                (every process, the kernel, and steal)
    user-cpu-seconds USER                       CPU seconds of the processes of USER now
                                                running (e.g. postgres: the server and its
                                                backends)
    http-pids BASE N                            the pids of the N HTTP workers behind BASE
                                                (from /healthz), one a line
    load URL TOKEN_FILE SECONDS CONNECTIONS     the fallback load generator (when wrk is
                                                missing); prints the same BENCH lines as
                                                buy.lua. Generator-bound: Python is slower
                                                than the service it measures.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# one copy of the process helpers, the rehearsal's (this file runs from scripts/bench/)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from loadtest.rehearsal.processes import free_port, wait_http


def _admin(base: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def create_sale(base: str, token: str, sale_id: str, stock: str) -> None:
    now = datetime.now(UTC)
    spec = {
        "sale_id": sale_id,
        "sku": "bench-sku",
        "name": "bench-buy sale",
        "price_cents": 100,
        "stock": int(stock),
        "per_user_limit": 1,
        "starts_at": (now - timedelta(minutes=1)).isoformat(),
        "ends_at": (now + timedelta(hours=2)).isoformat(),
        "reservation_ttl_s": 3600,  # no expiry sweeps during the run
    }
    status, body = _admin(base, token, "POST", "/v1/admin/sales", spec)
    if status != 201:
        sys.exit(f"could not create the sale: HTTP {status}: {body}")


def write_tokens(secret: str, user_ids: Iterable[str], path: str, ttl_s: int) -> None:
    """A shopper token for each user id, one a line."""
    from flashsale.auth import issue_token

    with open(path, "w") as f:
        for user_id in user_ids:
            f.write(issue_token(secret, user_id, ttl_s=ttl_s))
            f.write("\n")


def drain(base: str, token: str, sale_id: str, seconds: str) -> None:
    """After the load: how many units Redis reserved, and how long the order writer took to
    get them all into PostgreSQL."""
    started = time.monotonic()
    deadline = started + float(seconds)
    while True:
        status, body = _admin(base, token, "GET", f"/v1/admin/sales/{sale_id}/stats")
        if status != 200:
            print(f"BENCH drain error HTTP {status}: {body}")
            return
        stats = body["stats"]
        in_pg = stats["orders_in_postgres"]["total"]
        done = in_pg >= stats["reserved"] + stats["paid"]
        if done or time.monotonic() > deadline:
            waited = time.monotonic() - started
            print(f"BENCH reserved {stats['reserved']}")
            print(f"BENCH available {stats['available']}")
            print(f"BENCH orders_in_postgres {in_pg}")
            print(f"BENCH drain_s {waited:.1f}{'' if done else ' (gave up)'}")
            if stats["available"] == 0:
                print(f"BENCH sellout_s {_sellout_s(sale_id):.2f}")
            return
        time.sleep(0.2)


def _sellout_s(sale_id: str) -> float:
    """From the first reservation to the last (Redis's clock, as PostgreSQL holds them)."""
    import asyncpg

    async def query() -> float:
        conn = await asyncpg.connect(os.environ["FLASHSALE_DATABASE_URL"])
        try:
            span = await conn.fetchval(
                "SELECT extract(epoch FROM max(created_at) - min(created_at))"
                " FROM orders WHERE sale_id = $1",
                sale_id,
            )
            return float(span)
        finally:
            await conn.close()

    return asyncio.run(query())


def cleanup_redis(url: str, prefix: str) -> None:
    from loadtest.rehearsal.stores import delete_keys  # the rehearsal's: SCAN + UNLINK

    try:
        deleted = delete_keys(url, prefix)
    except ValueError as exc:
        sys.exit(str(exc))
    print(f"deleted {deleted} Redis keys matching {prefix}:*")


def redis_pid(url: str) -> None:
    import redis

    pid = redis.Redis.from_url(url).info("server")["process_id"]
    try:
        with open(f"/proc/{pid}/comm") as f:
            if "redis" in f.read():
                print(pid)
    except OSError:
        pass  # a Redis elsewhere (or in another pid namespace)


def cpu_seconds(pid: int | str) -> float | None:
    """User + system CPU seconds PID has used; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of stat(5); [0] here is field 3
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def _load(url: str, tokens: list[str], seconds: float, connections: int) -> None:
    import aiohttp

    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    errors = 0
    next_token = 0
    stop_at = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_token, errors
        while time.perf_counter() < stop_at:
            token = tokens[next_token % len(tokens)]
            next_token += 1
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=b"{}", headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] += 1
            except aiohttp.ClientError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1000

    total = sum(statuses.values())
    print("BENCH generator python-aiohttp (GENERATOR-BOUND: the figures measure this client)")
    print(f"BENCH requests {total}")
    print(f"BENCH duration_s {elapsed:.3f}")
    print(f"BENCH rps {total / elapsed:.1f}")
    if latencies:
        print(f"BENCH p50_ms {pct(50):.2f}")
        print(f"BENCH p99_ms {pct(99):.2f}")
        print(f"BENCH max_ms {latencies[-1] * 1000:.2f}")
    for code, n in sorted(statuses.items()):
        print(f"BENCH status {code} {n}")
    print(f"BENCH socket_errors {errors}")
    if next_token > len(tokens):
        print(f"BENCH wrapped tokens reused: {next_token - len(tokens)} requests")


def load(url: str, token_file: str, seconds: str, connections: str) -> None:
    with open(token_file) as f:
        tokens = [line.strip() for line in f if line.strip()]
    coro = _load(url, tokens, float(seconds), int(connections))
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


# -- the commands that print or exit, for bench-buy ---------------------------------------------


def free_port_command() -> None:
    print(free_port())


def wait_http_command(url: str, seconds: str) -> None:
    last = wait_http(url, float(seconds))
    if last is not None:
        sys.exit(f"{url} not ready after {seconds}s: {last}")


def mint_tokens(secret: str, count: str, path: str, ttl_s: str) -> None:
    started = time.perf_counter()
    write_tokens(secret, (f"bench-shopper-{i}" for i in range(int(count))), path, int(ttl_s))
    print(f"minted {count} shopper tokens in {time.perf_counter() - started:.1f}s", flush=True)


def cpu_seconds_command(*pids: str) -> None:
    seconds = [cpu_seconds(pid) for pid in pids]
    print("nan" if None in seconds else f"{sum(s for s in seconds if s is not None):.2f}")


def box_cpu_seconds() -> None:
    """The machine's busy seconds as the rehearsal's CPU sampler counts them, and the stolen
    ones: a core taken by the host is not free for the benchmark either."""
    from loadtest.rehearsal.processes import machine_cpu_s

    print(f"{sum(machine_cpu_s()):.2f}")


def user_cpu_seconds(user: str) -> None:
    import psutil

    total = 0.0
    for proc in psutil.process_iter(["username", "cpu_times"]):
        if proc.info["username"] == user and proc.info["cpu_times"] is not None:
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    print(f"{total:.2f}")


def http_pids(base: str, count: str) -> None:
    """Each new connection lands on some worker (SO_REUSEPORT): ask until all were seen."""
    pids: set[int] = set()
    deadline = time.monotonic() + 30
    while len(pids) < int(count) and time.monotonic() < deadline:
        req = urllib.request.Request(base + "/healthz", headers={"Connection": "close"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            pids.add(json.load(resp)["pid"])
    if len(pids) < int(count):
        sys.exit(f"saw only {len(pids)} of {count} workers behind {base}")
    print("\n".join(str(pid) for pid in sorted(pids)))


COMMANDS: dict[str, Callable[..., None]] = {
    "free-port": free_port_command,
    "wait-http": wait_http_command,
    "create-sale": create_sale,
    "mint-tokens": mint_tokens,
    "drain": drain,
    "cleanup-redis": cleanup_redis,
    "redis-pid": redis_pid,
    "cpu-seconds": cpu_seconds_command,
    "box-cpu-seconds": box_cpu_seconds,
    "user-cpu-seconds": user_cpu_seconds,
    "http-pids": http_pids,
    "load": load,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
