"""What counting metrics costs a buy, in instructions: scripts/bench-metrics runs this.

For each run, metrics on and off in turn (FLASHSALE_METRICS=1 / 0): ``flashsale serve
--single-process`` under valgrind's callgrind, its instrumentation off while it starts; a sale,
a warm-up of buys (caches, scripts, label children made), then instrumentation on, BUYS buys of
distinct shoppers (CONCURRENCY at a time, over HTTP from this process, which is not measured),
and a dump. The service's instructions in that window, divided by BUYS, are a buy's cost. The
order writer and the sweeper are off (FLASHSALE_RUN_WRITER=0, FLASHSALE_RUN_SWEEPER=0) so that
only the buys are counted; with metrics on, the window includes the publisher's rounds, which
valgrind's slowness makes about fifty times more frequent per buy than at full speed: an upper
bound.

    metrics_overhead.py OUTDIR BUYS RUNS CONCURRENCY
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import redis

from flashsale.auth import issue_token

WARMUP = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer within {timeout_s} s")
            await asyncio.sleep(0.5)


async def buys(base: str, sale_id: str, tokens: list[str], concurrency: int) -> dict[int, int]:
    statuses: dict[int, int] = {}
    queue = list(reversed(tokens))
    async with aiohttp.ClientSession(base) as http:

        async def shopper() -> None:
            while queue:
                token = queue.pop()
                headers = {"Authorization": f"Bearer {token}"}
                async with http.post(f"/v1/sales/{sale_id}/buy", json={}, headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        await asyncio.gather(*(shopper() for _ in range(concurrency)))
    return statuses


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=600)


def totals(path: Path) -> int:
    match = re.search(r"^totals: (\d+)", path.read_text(errors="replace"), re.M)
    if match is None:
        raise SystemExit(f"no totals in {path}")
    return int(match[1])


async def create_sale(base: str, admin: str, spec: dict[str, object]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{base}/v1/admin/sales", json=spec, headers={"Authorization": f"Bearer {admin}"}
        ) as resp,
    ):
        assert resp.status == 201, await resp.text()


def one_run(outdir: Path, label: str, metrics: str, n: int, concurrency: int) -> int:
    prefix = f"bench-m-{uuid.uuid4().hex[:8]}"
    token_secret, admin = secrets.token_urlsafe(48), secrets.token_urlsafe(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env.update(
        FLASHSALE_REDIS_URL=os.environ.get("FLASHSALE_REDIS_URL", "redis://127.0.0.1:6379/0"),
        FLASHSALE_DATABASE_URL=os.environ.get(
            "FLASHSALE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/flashsale_bench"
        ),
        FLASHSALE_KEY_PREFIX=prefix, FLASHSALE_TOKEN_SECRET=token_secret,
        FLASHSALE_ADMIN_TOKEN=admin, FLASHSALE_METRICS=metrics, FLASHSALE_RUN_WRITER="0",
        FLASHSALE_RUN_SWEEPER="0", PYTHONHASHSEED="0",
    )  # fmt: skip
    port = free_port()
    out = outdir / f"callgrind.{label}"
    log = (outdir / f"{label}.log").open("w")
    service = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         sys.executable, "-m", "flashsale", "serve", "--single-process",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_http(f"{base}/healthz", 600))
        sale_id = prefix
        now = datetime.now(UTC)
        spec = {
            "sale_id": sale_id, "sku": "bench", "name": "bench", "price_cents": 100,
            "stock": n + WARMUP, "per_user_limit": 1, "starts_at": now.isoformat(),
            "ends_at": (now + timedelta(hours=2)).isoformat(),
        }  # fmt: skip
        asyncio.run(create_sale(base, admin, spec))
        tokens = [issue_token(token_secret, f"{label}-{i}", 7200) for i in range(n + WARMUP)]
        asyncio.run(buys(base, sale_id, tokens[:WARMUP], concurrency))
        callgrind_control("--instr=on", str(service.pid))
        started = time.monotonic()
        statuses = asyncio.run(buys(base, sale_id, tokens[WARMUP:], concurrency))
        callgrind_control("--dump", str(service.pid))
        seconds = time.monotonic() - started
        assert statuses == {201: n}, statuses
    finally:
        service.terminate()
        service.wait(timeout=300)
        log.close()
        client = redis.Redis.from_url(env["FLASHSALE_REDIS_URL"])
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.unlink(*keys[i : i + 500])
    dumps = sorted(outdir.glob(f"callgrind.{label}.*"), key=lambda p: p.stat().st_mtime)
    instructions = totals(dumps[0])
    print(f"BENCH run {label} metrics={metrics} buys={n} seconds={seconds:.1f} "
          f"instructions={instructions} per_buy={instructions / n:.0f}", flush=True)  # fmt: skip
    return instructions


def main() -> None:
    outdir, n, runs, concurrency = (
        Path(sys.argv[1]),
        int(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
    )
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    outdir.mkdir(parents=True, exist_ok=True)
    per_buy: dict[str, list[float]] = {"1": [], "0": []}
    for run in range(runs):
        for metrics in ("1", "0") if run % 2 == 0 else ("0", "1"):
            label = f"{run + 1}-{'on' if metrics == '1' else 'off'}"
            per_buy[metrics].append(one_run(outdir, label, metrics, n, concurrency) / n)
    on, off = min(per_buy["1"]), min(per_buy["0"])
    print(f"per buy, the lowest of {runs} run(s): metrics on {on:,.0f} instructions, "
          f"off {off:,.0f}: counting costs {100 * (on - off) / off:+.2f} %")  # fmt: skip
    mean_on, mean_off = sum(per_buy["1"]) / runs, sum(per_buy["0"]) / runs
    print(f"means: on {mean_on:,.0f}, off {mean_off:,.0f}: "
          f"{100 * (mean_on - mean_off) / mean_off:+.2f} %")  # fmt: skip


if __name__ == "__main__":
    main()
