"""Running Locust: one headless process, Locust's web UI, or a master with N workers."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtest.rehearsal.processes import REPO, VENV_BIN, free_port, start, stop

STARTUP_S = 4.0  # from launching Locust to its first user, with room to spare
WEB_AUTOQUIT_S = 30  # with --web, the UI stays this long after the crowd stops


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
    on_start: Callable[[int], None] = lambda pid: None,
) -> LocustRun:
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
    if web:
        main += [
            "--web-host",
            "127.0.0.1",
            "--web-port",
            str(web_port),
            "--autostart",
            "--autoquit",
            str(WEB_AUTOQUIT_S),
        ]
        timeout_s += WEB_AUTOQUIT_S
        print(f"Locust web UI: http://127.0.0.1:{web_port}/", flush=True)
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
    on_start(master.pid)
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
            on_start(worker_procs[-1].pid)
        deadline = time.monotonic() + timeout_s
        worker_gone_at = None
        while master.poll() is None and time.monotonic() < deadline:
            if worker_gone_at is None and any(p.poll() is not None for p in worker_procs):
                worker_gone_at = time.monotonic()
            if worker_gone_at is not None and time.monotonic() - worker_gone_at > 10:
                # workers quit with their master, not 10 s before it
                print(f"launch-rehearsal: a Locust worker exited early; its log is in {out}")
                break
            time.sleep(0.2)
        if master.poll() is None:
            print(f"launch-rehearsal: Locust still running after {timeout_s:.0f}s; stopping it")
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
