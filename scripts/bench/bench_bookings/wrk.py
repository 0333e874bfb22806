"""wrk on core 1 with scripts/bench/buy.lua (the load of scripts/bench-buy: a distinct
shopper's token on every request), its BENCH lines parsed, and its report lines (part 5)."""

from __future__ import annotations

import asyncio
import resource
import subprocess
from pathlib import Path
from typing import Any

from .context import Bench
from .measure import CpuMeter
from .report import BenchError, n, out
from .servers import BENCH_DIR


async def run_wrk(
    bench: Bench, wrk: str, name: str, port: int, path: str, tokens: Path, server_pid: int
) -> dict[str, Any]:
    """wrk against 127.0.0.1:port/path; its BENCH figures (kept in <outdir>/<name>.txt), and
    the CPU used by the server, wrk and Redis."""
    result_file = bench.outdir / f"{name}.txt"
    meter = CpuMeter({"server": [server_pid], "Redis": [bench.redis_pid]})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with meter:
        proc = bench.procs.start(
            [wrk, "--threads", "1", "--connections", str(bench.o.connections),
             "--duration", f"{bench.o.duration}s", "--timeout", "10s", "--latency",
             "--script", str(BENCH_DIR / "buy.lua"), f"http://127.0.0.1:{port}",
             "--", str(tokens), path, "1"],
            log=result_file, core=1,
        )  # fmt: skip
        try:
            await asyncio.to_thread(proc.wait, bench.o.duration + 60)
        except subprocess.TimeoutExpired:
            raise BenchError(f"wrk did not end; see {result_file}") from None
        finally:
            bench.procs.stop(proc)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = result_file.read_text(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"wrk failed ({proc.returncode}):\n{text}")
    fields = parse_bench_lines(text)
    if "rps" not in fields:
        raise BenchError(f"wrk printed no figures:\n{text}")
    secs = float(fields["duration_s"])
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    fields["cpu"] = (
        f"server {100 * meter.used['server'] / secs:.0f}% of core 0, wrk "
        f"{100 * wrk_cpu / secs:.0f}% of core 1, Redis {100 * meter.used['Redis'] / secs:.0f}"
        "% of a core (unpinned)"
    )
    fields["generator_bound"] = wrk_cpu / secs >= 0.9
    return fields


def parse_bench_lines(text: str) -> dict[str, Any]:
    """buy.lua's ``BENCH key value`` lines: the status counts under "status", the socket
    errors and token-list restarts under "extra", every other value under its key."""
    fields: dict[str, Any] = {"status": {}, "extra": []}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0] != "BENCH":
            continue
        if parts[1] == "status":
            fields["status"][parts[2]] = parts[3]
        elif parts[1] == "socket_errors":
            fields["extra"].append(" ".join(parts[1:]))
        elif parts[1] == "wrapped":
            fields["extra"].append(f"token list restarted {parts[5]} time(s)")
        else:
            fields[parts[1]] = parts[2]
    return fields


def wrk_lines(f: dict[str, Any]) -> None:
    """The report's lines on one wrk run."""
    statuses = " ".join(f"{code}={n(int(v))}" for code, v in sorted(f["status"].items()))
    out(f"  requests/s           {f['rps']}")
    out(f"  latency p50 / p99    {f['p50_ms']} ms / {f['p99_ms']} ms (max {f['max_ms']} ms)")
    out(f"  status counts        {statuses}")
    out(f"  CPU busy             {f['cpu']}")
    for extra in f["extra"]:
        out(f"  {extra}")
    if f["generator_bound"]:
        out("  WARNING: wrk used >= 90% of its core: these figures may be GENERATOR-BOUND")
