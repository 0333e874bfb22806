"""Processes the rehearsal starts (the service, Locust) and what they cost in CPU."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, seconds: float, alive: Callable[[], bool] = lambda: True) -> str | None:
    """Wait until ``url`` answers 200: None then, else the last failure."""
    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            return "the process exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return None
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read().decode(errors='replace')}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    return last


def start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a session of its own (so it and any children it forks can be stopped
    together), its output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes] | None, timeout_s: float = 10.0) -> None:
    """SIGTERM to the process group we started, SIGKILL after ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # the group's id is the pid: start_new_session
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def serve_command(port: int, workers: int | None) -> tuple[list[str], int]:
    """``flashsale serve`` on ``port``: with ``--workers`` when this version offers it (2 by
    default, one per core of this machine), else one process. (command, processes)."""
    cmd = [str(VENV_BIN / "flashsale"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    helped = subprocess.run(
        [*cmd[:2], "--help"], capture_output=True, text=True, cwd=REPO, check=False
    ).stdout
    if "--workers" not in helped:
        return cmd, 1
    n = workers if workers is not None else 2
    return [*cmd, "--workers", str(n)], n


class CpuSampler:
    """CPU seconds used by groups of processes (the service with the workers it forks, Locust,
    Redis and PostgreSQL when on this machine), sampled every ``interval_s`` in a thread, so
    the report can tell what each used during the sale itself, not just on average."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.groups: dict[str, Callable[[], list[psutil.Process]]] = {}
        self.samples: list[tuple[float, dict[str, float]]] = []  # (epoch s, cumulative CPU s)
        self._known: dict[int, psutil.Process] = {}  # kept, so cpu_times keeps working
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._machine: str | None = None
        self._last: dict[str, dict[int, float]] = {}  # group -> pid -> CPU seconds

    def add_tree(self, name: str, pid: int) -> None:
        """A process and its children; several trees may share a name (Locust's workers)."""
        previous = self.groups.get(name)

        def tree() -> list[psutil.Process]:
            found = previous() if previous else []
            try:
                root = psutil.Process(pid)
                return [*found, root, *root.children(recursive=True)]
            except psutil.Error:
                return found

        self.groups[name] = tree

    def add_named(self, name: str, process_name: str) -> None:
        def named() -> list[psutil.Process]:
            return [p for p in psutil.process_iter(["name"]) if p.info["name"] == process_name]

        self.groups[name] = named

    def add_machine(self, name: str) -> None:
        """Every core's busy time, whoever used it (other work on this machine included)."""
        self._machine = name

    def _seconds(self, group: str, procs: list[psutil.Process]) -> float:
        """The group's CPU seconds, counting processes that exited since with their last
        reading (PostgreSQL backends come and go with connections)."""
        seen = self._last.setdefault(group, {})
        for proc in procs:
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            seen[proc.pid] = t.user + t.system
        return sum(seen.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            now, seconds = time.time(), {}
            for group, processes in list(self.groups.items()):  # Locust joins meanwhile
                if procs := processes():  # a group whose processes are gone is left out
                    seconds[group] = self._seconds(group, procs)
            if self._machine is not None:
                t = psutil.cpu_times()
                seconds[self._machine] = sum(t) - t.idle - getattr(t, "iowait", 0.0)
            self.samples.append((now, seconds))
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def cores(self, begin: float, end: float) -> dict[str, float]:
        """Average cores each group used between two moments (epoch s): from its last sample
        at or before ``begin`` to its first at or after ``end`` (or the nearest ones inside,
        for processes that started or exited in between)."""
        out = {}
        for group in [*self.groups, *([self._machine] if self._machine else [])]:
            seen = [(t, c[group]) for t, c in self.samples if group in c]
            before = [x for x in seen if x[0] <= begin] or seen[:1]
            after = [x for x in seen if x[0] >= end] or seen[-1:]
            if before and after and after[0][0] > before[-1][0]:
                (t0, c0), (t1, c1) = before[-1], after[0]
                out[group] = round(max(0.0, c1 - c0) / (t1 - t0), 2)
        return out
