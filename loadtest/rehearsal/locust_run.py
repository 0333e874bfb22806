"""Running Locust: one headless process, Locust's web UI, or a master with N workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtest.rehearsal.processes import REPO, VENV_BIN, free_port, start, stop

STARTUP_S = 4.0  # from launching Locust to its first user, with room to spare
WEB_LINGER_S = 30  # with --web, the UI stays this long after the crowd stops


@dataclass
class LocustRun:
    exit_code: int
    log: Path
    csv_prefix: Path
    html: Path


def locust_env(env: dict[str, str]) -> dict[str, str]:
    # the locustfile imports the loadtest package from the repository
    python_path = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": python_path}


def run_locust(
    out: Path,
    base_url: str,
    plan_path: Path,
    env: dict[str, str],
    *,
    workers: int,
    web: bool,
    web_port: int,
    timeout_s: float,
    on_start: Callable[[int, str], None] = lambda pid, role: None,
    gate: Callable[[Callable[[], bool]], None] | None = None,
    say: Callable[[str], None] = print,
) -> LocustRun:
    """Run Locust until its crowd is done. ``gate``, given whether Locust still runs, waits
    for the crowd to start (the web UI's Start button) and opens the sale; ``timeout_s``
    counts from then. With ``web``, the crowd starts on the button, not on its own, and the
    UI stays up ``WEB_LINGER_S`` after the crowd stops, saying so."""
    env = locust_env(env)
    common = [
        str(VENV_BIN / "locust"),
        "--config",
        str(REPO / "loadtest" / "locust.conf"),
        "--host",
        base_url,
        "--plan",
        str(plan_path),
    ]
    csv_prefix, html = out / "locust", out / "locust.html"
    main = [*common, "--csv", str(csv_prefix), "--csv-full-history", "--html", str(html)]
    web_url = f"http://127.0.0.1:{web_port}"
    if web:
        main += ["--web-host", "127.0.0.1", "--web-port", str(web_port)]
    else:
        main.append("--headless")
    worker_procs: list[subprocess.Popen[bytes]] = []
    if workers > 0:
        port = free_port()
        main += [
            "--expect-workers-max-wait",
            "60",
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--expect-workers",
            str(workers),
        ]
    log = out / "locust.log"
    master = start(main, log, env)
    on_start(master.pid, "master" if workers else "process")
    try:
        for i in range(workers):
            worker_cmd = [
                *common,
                "--worker",
                "--master-host",
                "127.0.0.1",
                "--master-port",
                str(port),
            ]
            worker_procs.append(start(worker_cmd, out / f"locust-worker-{i}.log", env))
            on_start(worker_procs[-1].pid, f"worker {i}")
        if gate is not None:
            gate(lambda: master.poll() is None)
        deadline = time.monotonic() + timeout_s
        worker_gone_at = None
        next_look = time.monotonic()
        while master.poll() is None and time.monotonic() < deadline:
            if web and time.monotonic() >= next_look:  # the web UI does not quit on its own
                next_look += 1.0
                if web_state(web_url) != "stopped":
                    continue  # (the worker checks and the pause below come next time)
                say(
                    f"the crowd has stopped; Locust's web UI stays up {WEB_LINGER_S} s more at "
                    f"{web_url}/ for a look, then the rehearsal goes on (its report: {html})"
                )
                time.sleep(WEB_LINGER_S)
                _interrupt(master)  # as Ctrl-C: Locust writes its HTML report and quits
                break
            if worker_gone_at is None and any(p.poll() is not None for p in worker_procs):
                worker_gone_at = time.monotonic()
            if worker_gone_at is not None and time.monotonic() - worker_gone_at > 10:
                # workers quit with their master, not 10 s before it
                say(f"a Locust worker exited early; its log is in {out}")
                break
            time.sleep(0.2)
        if master.poll() is None:
            say(f"Locust still running {timeout_s:.0f} s after the crowd started; stopping it")
        stop(master, timeout_s=15)
        # workers quit when their master does; give them a moment to write their records
        deadline = time.monotonic() + 15
        while any(p.poll() is None for p in worker_procs) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for proc in worker_procs:
            stop(proc)
        stop(master)
    return LocustRun(master.returncode or 0, log, csv_prefix, html)


def web_state(web_url: str) -> str | None:
    """The state of Locust's runner (ready, spawning, running, stopped, ...) from its web UI."""
    try:
        with urllib.request.urlopen(f"{web_url}/stats/requests", timeout=2) as resp:
            state = json.load(resp).get("state")
            return state if isinstance(state, str) else None
    except (OSError, ValueError):
        return None


def start_from_web(web_url: str, users: int, spawn_rate: float) -> bool:
    """Start the crowd as the Start button does (the load shape sets its size)."""
    body = urllib.parse.urlencode({"user_count": users, "spawn_rate": spawn_rate}).encode()
    try:
        with urllib.request.urlopen(f"{web_url}/swarm", data=body, timeout=5) as resp:
            return bool(json.load(resp).get("success"))
    except (OSError, ValueError):
        return False


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
