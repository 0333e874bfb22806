"""The processes the benchmark starts and the throwaway database, and their clean-up.

Every process is started through Processes: pinned with taskset if asked, and given SIGKILL by
the kernel if this process dies first (``setpriv --pdeathsig``). Cleanup stops them and drops
the database, once, from a ``finally`` or an ``atexit`` hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from helper import free_port, wait_http

from .report import BenchError, progress

ROOT = Path(__file__).resolve().parents[3]
BENCH_DIR = ROOT / "scripts" / "bench"
SETPRIV = shutil.which("setpriv")


class Processes:
    """Every process the benchmark starts; stop_all() ends those still running."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[bytes]] = []

    def start(
        self, args: list[str], *, log: Path, core: int | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:  # fmt: skip
        command = list(args)
        if core is not None:
            command = ["taskset", "-c", str(core), *command]
        if SETPRIV is not None:
            # SIGKILL from the kernel if this process dies without cleaning up
            command = [SETPRIV, "--pdeathsig", "KILL", "--", *command]
        with log.open("ab") as f:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env,
                cwd=ROOT,
            )  # fmt: skip
        self.live.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc in self.live:
            self.live.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.live)):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout_s=5.0)


def start_redis(procs: Processes, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """redis-server on a free port, no RDB, no AOF, the default configuration otherwise."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed")
    log = workdir / "redis.log"
    for _ in range(5):
        port = free_port()
        proc = procs.start(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), "--logfile", str(log)],
            log=workdir / "redis.out",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return proc, port
            except OSError:
                pass
            time.sleep(0.02)
        procs.stop(proc)
        if "Address already in use" not in log.read_text(errors="replace"):
            raise BenchError(f"redis-server did not start; see {log}")
    raise BenchError("redis-server found no free port")


async def start_server(
    procs: Processes, args: list[str], *, health_url: str, wait_s: float, log: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """An HTTP server on core 0, once ``health_url`` answers 200 (the caller stops it)."""
    proc = procs.start(args, log=log, core=0, env=env)

    def alive() -> bool:
        return proc.poll() is None

    try:
        last = await asyncio.to_thread(wait_http, health_url, wait_s, alive)
    except BaseException:
        procs.stop(proc)  # also ends the thread's wait
        raise
    if last is not None:
        exited = not alive()
        procs.stop(proc)
        if exited:
            raise BenchError(f"{health_url}: the server exited; see its log {log}")
        raise BenchError(f"{health_url} did not answer 200 within {wait_s}s ({last}); see {log}")
    return proc


# -- the throwaway database ----------------------------------------------------------------------


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


async def admin_sql(server_url: str, statement: str) -> None:
    """One statement on the server's ``postgres`` database."""
    admin = await asyncpg.connect(with_database(server_url, "postgres"))
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


class Cleanup:
    """Stops the processes and drops the database, once, from ``finally`` or ``atexit``."""

    def __init__(self, procs: Processes, server_url: str, workdir: Path) -> None:
        self.procs = procs
        self.server_url = server_url
        self.workdir = workdir
        self.database: str | None = None
        self.done = False

    def create_database(self, name: str) -> None:
        self.database = name
        asyncio.run(admin_sql(self.server_url, f'CREATE DATABASE "{name}"'))

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        self.procs.stop_all()
        if self.database is not None:
            statement = f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'
            try:
                asyncio.run(admin_sql(self.server_url, statement))
                progress(f"dropped database {self.database}")
            except Exception as exc:
                progress(f"could not drop database {self.database}: {exc!r} (drop it by hand)")
        shutil.rmtree(self.workdir, ignore_errors=True)
