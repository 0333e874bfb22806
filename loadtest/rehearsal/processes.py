"""Processes the rehearsal starts (the service, Locust), the ones it finds (a running service
by its port, Redis, PostgreSQL), and what each of them costs in CPU."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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


# the components the report names; "load generator" is Locust
SERVICE, GENERATOR, REDIS, POSTGRES = "service", "load generator", "redis", "postgres"
REHEARSAL = "rehearsal"  # this driver: the sampler, the event receiver, the late payments
COMPONENTS = (SERVICE, GENERATOR, REDIS, POSTGRES, REHEARSAL)


def is_local_host(host: str | None) -> bool:
    """Whether ``host`` is this machine (a loopback name or address, or one of its own)."""
    if not host or host in ("localhost", "0.0.0.0", "::"):
        return True
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    own = {a.address.split("%")[0] for nics in psutil.net_if_addrs().values() for a in nics}
    return any(ipaddress.ip_address(a).is_loopback or a in own for a in addresses)


def listening_pids(port: int) -> tuple[list[int], bool]:
    """The processes listening on TCP ``port`` on this machine, and whether any listener's
    process could not be seen (another user's, without the rights to see it)."""
    pids, hidden = set(), False
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return [], True
    for c in connections:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            if c.pid is None:
                hidden = True
            else:
                pids.add(c.pid)
    return sorted(pids), hidden


def _mentions(proc: psutil.Process, word: str) -> bool:
    try:
        return word in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def service_roots(listeners: Iterable[int], word: str = "flashsale") -> list[int]:
    """From the processes listening on the service's port up to the process that started
    them (the ``flashsale serve`` that forked its workers): the roots of the service's trees."""
    roots = set()
    for pid in listeners:
        try:
            proc = psutil.Process(pid)
            while (parent := proc.parent()) is not None and parent.pid > 1:
                if not _mentions(parent, word):
                    break
                proc = parent
            roots.add(proc.pid)
        except psutil.Error:
            continue
    return sorted(roots)


def machine_cpu_s() -> tuple[float, float]:
    """Every core's busy seconds since boot, other work's included, and the seconds stolen
    from this machine by its host."""
    m = psutil.cpu_times()
    steal = getattr(m, "steal", 0.0)
    # guest time is counted in user time already; idle, iowait and steal are not busy
    busy = sum(m) - m.idle - getattr(m, "iowait", 0.0) - steal
    busy -= getattr(m, "guest", 0.0) + getattr(m, "guest_nice", 0.0)
    return busy, steal


def tree(pid: int) -> list[int]:
    """A process and its descendants (none if it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root.pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return []


@dataclass
class Sample:
    t: float  # epoch seconds
    cpu: dict[str, dict[int, float]]  # component -> pid -> CPU seconds used so far
    machine_busy_s: float  # every core's busy seconds so far (other work's included)
    machine_steal_s: float


@dataclass
class WindowCpu:
    """What each component used over a window: average cores, the busiest process's."""

    begin: float
    end: float
    samples: int  # samples taken within the window
    cores: dict[str, float] = field(default_factory=dict)
    busiest: dict[str, tuple[float, int]] = field(default_factory=dict)  # (cores, pid)
    processes: dict[str, int] = field(default_factory=dict)
    machine: float | None = None
    steal: float | None = None

    def to_json(self, labels: dict[int, str]) -> dict[str, Any]:
        return {
            "from": self.begin,
            "to": self.end,
            "seconds": round(self.end - self.begin, 3),
            "samples": self.samples,
            "cores": {k: round(v, 2) for k, v in self.cores.items()},
            "busiest_process": {
                k: {"cores": round(c, 2), "pid": pid, "what": labels.get(pid, "")}
                for k, (c, pid) in self.busiest.items()
            },
            "processes": self.processes,
            "machine_busy_cores": None if self.machine is None else round(self.machine, 2),
            "machine_steal_cores": None if self.steal is None else round(self.steal, 2),
        }


class CpuSampler:
    """CPU seconds of each process of each component (the service, Locust, Redis, PostgreSQL
    and this driver), read every ``interval_s`` in a thread (often enough for a sale of a
    second or two), the processes of each looked up again every ``refresh_s`` (PostgreSQL's
    backends come and go, Locust's workers join). A component that cannot be measured is
    kept in ``unknown`` with the reason, for the report to say."""

    def __init__(self, interval_s: float = 0.1, refresh_s: float = 1.0) -> None:
        self.interval_s, self.refresh_s = interval_s, refresh_s
        self.finders: dict[str, list[Callable[[], list[int]]]] = {}
        self.unknown: dict[str, str] = {}
        self.labels: dict[int, str] = {}  # pid -> what it is, for the report
        self.samples: list[Sample] = []
        self.created: dict[int, float] = {}  # pid -> its start (epoch s)
        self._procs: dict[str, dict[int, psutil.Process]] = {}
        self._refreshed = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def add(self, component: str, finder: Callable[[], list[int]]) -> None:
        with self._lock:
            self.finders.setdefault(component, []).append(finder)
            self.unknown.pop(component, None)
            self._refreshed = 0.0  # look the processes up at the next sample

    def add_tree(self, component: str, pid: int, label: str = "") -> None:
        """A process and its children; several trees may share a component (Locust's)."""
        if label:
            self.labels[pid] = label
        self.add(component, lambda: tree(pid))

    def add_trees(self, component: str, roots: Callable[[], list[int]]) -> None:
        self.add(component, lambda: [p for root in roots() for p in tree(root)])

    def not_measured(self, component: str, why: str) -> None:
        if component not in self.finders:
            self.unknown[component] = why

    def _refresh(self) -> None:
        for component, finders in list(self.finders.items()):
            known = self._procs.setdefault(component, {})
            for finder in finders:
                for pid in finder():
                    if pid in known:
                        continue
                    try:
                        proc = psutil.Process(pid)
                        self.created.setdefault(pid, proc.create_time())
                        if pid not in self.labels:
                            self.labels[pid] = " ".join(" ".join(proc.cmdline()).split())[:80]
                    except psutil.Error:
                        continue
                    known[pid] = proc  # kept: cpu_times keeps working until it exits

    def sample(self) -> Sample:
        now = time.time()
        with self._lock:
            if now - self._refreshed >= self.refresh_s:
                self._refresh()
                self._refreshed = now
            cpu: dict[str, dict[int, float]] = {}
            for component, procs in self._procs.items():
                seen = cpu.setdefault(component, {})
                for pid, proc in list(procs.items()):
                    try:
                        t = proc.cpu_times()
                    except psutil.Error:
                        del procs[pid]  # exited: its last reading stays in earlier samples
                        continue
                    seen[pid] = t.user + t.system
        busy, steal = machine_cpu_s()
        s = Sample(now, cpu, busy, steal)
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def components(self) -> list[str]:
        return [c for c in COMPONENTS if c in self.finders] + [
            c for c in self.finders if c not in COMPONENTS
        ]

    def _pid_series(self, component: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Each process's CPU seconds over time; one that started while sampling went on
        starts from 0 at its start, so what it used before its first sample counts too."""
        out: dict[int, tuple[list[float], list[float]]] = {}
        for s in self.samples:
            for pid, secs in s.cpu.get(component, {}).items():
                ts, vs = out.setdefault(pid, ([], []))
                ts.append(s.t)
                vs.append(secs)
        first = self.samples[0].t if self.samples else 0.0
        series = {}
        for pid, (ts, vs) in out.items():
            started = self.created.get(pid, ts[0])
            if first < started < ts[0]:
                ts, vs = [started, *ts], [0.0, *vs]
            series[pid] = (np.array(ts), np.array(vs))
        return series

    def _used(self, component: str, edges: np.ndarray) -> dict[int, np.ndarray]:
        """CPU seconds each process of a component used between successive ``edges``."""
        return {
            pid: np.diff(np.interp(edges, ts, vs))
            for pid, (ts, vs) in self._pid_series(component).items()
        }

    def window(self, begin: float, end: float) -> WindowCpu:
        """Average cores each component (and its busiest process) used between two moments
        (epoch s), and the whole machine's."""
        w = WindowCpu(begin, end, sum(1 for s in self.samples if begin <= s.t <= end))
        span = end - begin
        if span <= 0 or len(self.samples) < 2:
            return w
        edges = np.array([begin, end])
        for component in self.components():
            used = {pid: float(u[0]) for pid, u in self._used(component, edges).items()}
            used = {pid: u for pid, u in used.items() if u > 0}
            if component not in self._procs:
                continue
            w.cores[component] = sum(used.values()) / span
            w.processes[component] = len(used)
            if used:
                pid = max(used, key=lambda p: used[p])
                w.busiest[component] = (used[pid] / span, pid)
        machine = self._machine(edges, steal=False)
        if not np.isnan(machine[0]):
            w.machine = float(machine[0])
            w.steal = float(self._machine(edges, steal=True)[0])
        return w

    def _machine(self, edges: np.ndarray, *, steal: bool) -> np.ndarray:
        ts = np.array([s.t for s in self.samples])
        busy = np.array([s.machine_steal_s if steal else s.machine_busy_s for s in self.samples])
        out = np.full(len(edges) - 1, np.nan)
        if ts.size < 2:
            return out
        a, b = np.maximum(edges[:-1], ts[0]), np.minimum(edges[1:], ts[-1])
        ok = b > a
        out[ok] = (np.interp(b[ok], ts, busy) - np.interp(a[ok], ts, busy)) / (b[ok] - a[ok])
        return out

    def series(self, edges: np.ndarray) -> dict[str, np.ndarray]:
        """Cores each component used in each interval between ``edges`` (epoch s), and the
        machine's ("machine"); NaN where nothing was sampled."""
        width = np.diff(edges)
        out: dict[str, np.ndarray] = {}
        if len(self.samples) < 2:
            return out
        sampled = (edges[1:] > self.samples[0].t) & (edges[:-1] < self.samples[-1].t)
        for component in self.components():
            used = self._used(component, edges)
            total = np.sum(list(used.values()), axis=0) if used else np.zeros(width.size)
            out[component] = np.where(sampled, total / width, np.nan)
        out["machine"] = self._machine(edges, steal=False)
        return out

    def save(self, path: Path) -> None:
        """Every sample, one JSON line each: t, machine busy seconds, per component per pid."""
        with path.open("w") as f:
            for s in self.samples:
                cpu = {c: {str(pid): round(v, 3) for pid, v in procs.items()}
                       for c, procs in s.cpu.items()}  # fmt: skip
                f.write(json.dumps({"t": s.t, "machine_busy_s": round(s.machine_busy_s, 3),
                                    "machine_steal_s": round(s.machine_steal_s, 3),
                                    "cpu": cpu}) + "\n")  # fmt: skip


def find_service(url: str) -> tuple[Callable[[], list[int]] | None, str, list[int]]:
    """A running service's processes, found by its port: the processes listening on it and
    everything their ``flashsale`` parent started (its workers, writer and relay). (a finder
    of the roots of its process trees or None, why not, the listening pids)."""
    parts = urllib.parse.urlsplit(url)
    if not is_local_host(parts.hostname):
        return None, f"it runs on {parts.hostname}, not on this machine", []
    port = parts.port or (443 if parts.scheme == "https" else 80)
    listeners, hidden = listening_pids(port)
    if not listeners:
        why = "its processes belong to another user" if hidden else "nothing listens on it here"
        return None, f"port {port}: {why}", []
    roots = service_roots(listeners)
    if not any(_mentions(psutil.Process(r), "flashsale") for r in roots if psutil.pid_exists(r)):
        names = ", ".join(sorted({_name(pid) for pid in listeners}))
        return None, f"port {port} is served by {names}, not flashsale (a proxy?)", []
    return (lambda: roots), "", listeners


def _name(pid: int) -> str:
    try:
        return str(psutil.Process(pid).name())
    except psutil.Error:
        return f"pid {pid}"


def find_listener_tree(host: str | None, port: int, word: str) -> tuple[list[int], str]:
    """The processes listening on ``port`` of this machine when they are ``word`` (the
    postmaster, a Redis server), and why not otherwise (another machine, a proxy)."""
    if not is_local_host(host):
        return [], f"it runs on {host}, not on this machine"
    pids, hidden = listening_pids(port)
    if not pids:
        return [], f"port {port}: " + (
            "its processes belong to another user" if hidden else "nothing listens on it here"
        )
    if not all(word in _name(pid) for pid in pids):
        names = ", ".join(sorted({_name(pid) for pid in pids}))
        return [], f"port {port} is served by {names} (a container or a proxy?)"
    return pids, ""
