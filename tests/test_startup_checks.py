"""Start-up checks that save a launch: ``serve`` refuses a Redis that may evict keys and a
missing secret, warns about a Redis that keeps nothing on disk; ``flashsale doctor`` reports
it all. The shared Redis is never reconfigured: the Redis under test is a private
``redis-server`` on a free port, set up as each test needs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from flashsale.settings import Settings
from tests.conftest import CI
from tests.helpers import flashsale_env, run_flashsale
from tests.servers import free_port


@contextlib.contextmanager
def private_redis(directory: Path, *config: str) -> Iterator[str]:
    """``redis-server`` on a free port, no snapshots, with ``config``; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        if CI:
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir",
         str(directory), "--daemonize", "no", *config],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            assert proc.poll() is None, "redis-server failed"
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


async def serve(settings: Settings, **env: str) -> tuple[int | None, str, int]:
    """``flashsale serve --single-process``: (exit code, stderr) when it refused to start, or
    (None, stderr so far) once it answers /healthz, when it is stopped again."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flashsale", "serve", "--single-process", "--port", str(port),
        env=flashsale_env(settings, **env),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while proc.returncode is None and time.monotonic() < deadline:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
        if proc.returncode is None and time.monotonic() < deadline:
            running = True
            proc.terminate()
        else:
            running = False
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return (None if running else proc.returncode), err.decode(), port


@pytest.mark.parametrize("missing", ["FLASHSALE_ADMIN_TOKEN", "FLASHSALE_TOKEN_SECRET"])
async def test_serve_refuses_to_start_without_its_secrets(settings: Settings, missing: str) -> None:
    code, err, _ = await serve(settings, **{missing: ""})
    assert code == 2, err
    assert f"{missing} not set" in err
    assert "secrets.token_urlsafe(32)" in err  # how to make one


async def test_serve_refuses_a_redis_that_evicts(settings: Settings, tmp_path: Path) -> None:
    with private_redis(tmp_path, "--maxmemory-policy", "allkeys-lru") as url:
        mine = replace(settings, redis_url=url)
        code, err, _ = await serve(mine)
        assert code == 2, err
        assert "maxmemory-policy is allkeys-lru" in err
        assert "noeviction" in err
        assert "FLASHSALE_ALLOW_EVICTION=1" in err

        code, err, _ = await serve(mine, FLASHSALE_ALLOW_EVICTION="1")
        assert code is None, err  # it started, and says what it was allowed
        assert "maxmemory-policy is allkeys-lru" in err
        assert "started anyway" in err

        code, out, err = await run_flashsale(mine, "doctor", "--json")
        report = json.loads(out)
        assert code == 1, err
        eviction = next(c for c in report["checks"] if c["name"] == "redis eviction")
        assert eviction["outcome"] == "fail"
        assert not report["ok"]


async def test_serve_warns_about_a_redis_without_persistence(
    settings: Settings, tmp_path: Path
) -> None:
    with private_redis(tmp_path) as url:  # no AOF, no snapshots
        mine = replace(settings, redis_url=url)
        code, err, _ = await serve(mine)
        assert code is None, err
        assert "redis persistence: no persistence (no AOF, no RDB snapshot)" in err
        assert "FLASHSALE_CONFIRM_MODE=redis" in err
        code, err, _ = await serve(mine, FLASHSALE_CONFIRM_MODE="postgres")
        assert code is None, err
        assert "redis persistence" not in err  # orders are committed before their 201


async def test_where_config_get_is_disabled_it_warns(settings: Settings, tmp_path: Path) -> None:
    with private_redis(tmp_path, "--rename-command", "CONFIG", "") as url:
        mine = replace(settings, redis_url=url)
        code, err, _ = await serve(mine)
        assert code is None, err
        assert "CONFIG GET is not allowed on this Redis" in err
        code, out, _ = await run_flashsale(mine, "doctor", "--json")
        checks = {c["name"]: c for c in json.loads(out)["checks"]}
        assert checks["redis eviction"]["outcome"] == "warn"
        assert code == 1


async def test_doctor_all_good(settings: Settings, tmp_path: Path) -> None:
    with private_redis(tmp_path, "--appendonly", "yes", "--appendfsync", "always") as url:
        mine = replace(settings, redis_url=url)
        assert (await run_flashsale(mine, "db", "migrate"))[0] == 0
        code, out, _ = await run_flashsale(mine, "doctor", "--json")
        report = json.loads(out)
        assert code == 0, report
        assert report["ok"] is True
        assert {c["outcome"] for c in report["checks"]} == {"ok"}
        assert {c["name"] for c in report["checks"]} == {
            "secrets", "redis", "redis eviction", "redis persistence", "redis clock",
            "postgresql", "postgresql clock", "schema",
        }  # fmt: skip
        versions = report["versions"]
        assert versions["redis_server"].count(".") == 2
        for name in ("postgresql_server", "aiohttp", "flashsale"):
            assert versions[name], name
        assert report["schema"]["up_to_date"] is True
        assert abs(report["clock_skew"]["redis_ms"]) < 1000
        assert abs(report["clock_skew"]["postgresql_ms"]) < 1000

        code, out, _ = await run_flashsale(mine, "doctor")
        assert code == 0
        assert "ok    redis eviction: maxmemory-policy noeviction" in out
        assert out.rstrip().endswith("all good")


async def test_doctor_names_what_is_missing(settings: Settings) -> None:
    env = flashsale_env(settings, FLASHSALE_ADMIN_TOKEN="",
                        FLASHSALE_REDIS_URL="redis://127.0.0.1:9/0")  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flashsale", "doctor", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 1
    text = out.decode()
    assert "FAIL  secrets: FLASHSALE_ADMIN_TOKEN not set" in text
    assert "FAIL  redis: redis://127.0.0.1:9/0 cannot be reached" in text
    assert "something needs looking at" in text
