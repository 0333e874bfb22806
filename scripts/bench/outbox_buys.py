"""What the outbox costs the buy path on the whole machine: scripts/bench-outbox --whole-box runs
this.

Two copies of this working tree (as ``git add --all`` would take it, new files included):
"with", as it is, and "without", where ``record_events`` returns at once (no outbox row is
written, by the writer or by the group commit; nothing else differs). Each runs
``scripts/bench-buy --whole-machine`` (two HTTP workers, the order writer, wrk, Redis and
PostgreSQL sharing the two cores) on a database of its own, in turns (ABBA ABBA ...), so that
both variants meet the same drift of a shared machine. A run's stock is larger than it can sell
in DURATION seconds, so buys/s is the rate during the whole load, not a sell-out cut short.

Printed per run and as the mean of each variant: buys/s (201s a second of load), the machine's
busy CPU per sold unit over the load and until the writer has stored every order, and
PostgreSQL's share of it; then with against without.

    outbox_buys.py OUTDIR --pairs N [--duration S] [--confirm-mode redis|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
STOCK = 400_000  # more than two minutes of the best run on this machine: it never sells out
# record_events's first line: "without" stores orders and payments as "with" does, no events
SIGNATURE = "async def record_events(conn: asyncpg.Connection, rows: Iterable[object]) -> None:\n"


def git(*args: str, env: dict[str, str] | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, env=env, capture_output=True,
                          check=True).stdout  # fmt: skip


def make_trees(workdir: Path) -> dict[str, Path]:
    # the working tree as git would commit it now, new files included, in an index of its own
    index = dict(os.environ, GIT_INDEX_FILE=str(workdir / "index"))
    git("read-tree", "HEAD", env=index)
    git("add", "--all", env=index)
    snapshot = git("write-tree", env=index).decode().strip()
    trees = {}
    for variant in ("with", "without"):
        tree = workdir / variant
        tree.mkdir()
        archive = git("archive", snapshot)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        (tree / ".venv").symlink_to(ROOT / ".venv")
        trees[variant] = tree
    events = trees["without"] / "flashsale/outbox/events.py"
    text = events.read_text()
    if SIGNATURE not in text:
        sys.exit(f"outbox_buys: {events} no longer has record_events as expected")
    events.write_text(text.replace(SIGNATURE, SIGNATURE + "    return  # without the outbox\n"))
    return trees


def field(text: str, name: str) -> float | None:
    match = re.search(rf"^BENCH {name} (\S+)", text, re.MULTILINE)
    return float(match.group(1)) if match else None


async def outbox_rows(database_url: str, sale_id: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM outbox WHERE sale_id = $1", sale_id))
    finally:
        await conn.close()


def one_run(
    tree: Path, variant: str, duration: int, confirm_mode: str, log: Path
) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree), FLASHSALE_CONFIRM_MODE=confirm_mode,
               FLASHSALE_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/"
               f"flashsale_bench_outbox_{variant}")  # fmt: skip
    done = subprocess.run(
        ["scripts/bench-buy", "--no-install", "--whole-machine", "--stock", str(STOCK),
         "--tokens", str(STOCK), "--duration", str(duration)],
        cwd=tree, env=env, capture_output=True, text=True,
    )  # fmt: skip
    log.write_text(done.stdout + done.stderr)
    logs = re.search(r"^logs: (\S+)", done.stdout, re.MULTILINE)
    if done.returncode != 0 or logs is None:
        sys.exit(f"outbox_buys: bench-buy failed ({variant}); see {log}")
    raw = (tree / logs.group(1) / "buy.txt").read_text()
    created = field(raw, "status 201") or 0.0
    seconds = field(raw, "duration_s") or float(duration)
    if not created:
        sys.exit(f"outbox_buys: no buy succeeded ({variant}); see {log}")
    sale_id = Path(logs.group(1)).name  # bench-buy names its sale after its key prefix
    rows = asyncio.run(outbox_rows(env["FLASHSALE_DATABASE_URL"], sale_id))
    if (rows < created) if variant == "with" else rows:
        sys.exit(f"outbox_buys: {rows:,.0f} outbox rows for {created:,.0f} orders ({variant})")
    per_unit = {name: 1e6 * (field(raw, name) or 0.0) / created
                for name in ("box_cpu_s", "box_cpu_drained_s", "postgres_cpu_s",
                             "postgres_cpu_drained_s", "writer_cpu_drained_s")}  # fmt: skip
    return {"buys_s": created / seconds, "created": created, **per_unit}


COLUMNS = [("buys_s", "buys/s", "{:,.0f}"), ("box_cpu_s", "box µs/unit", "{:.0f}"),
           ("box_cpu_drained_s", "drained", "{:.0f}"), ("postgres_cpu_drained_s", "PG µs/unit",
           "{:.1f}"), ("writer_cpu_drained_s", "writer µs/unit", "{:.1f}")]  # fmt: skip


def show(variant: str, run: dict[str, float]) -> None:
    cells = "  ".join(f"{label} {fmt.format(run[key])}" for key, label, fmt in COLUMNS)
    print(f"  {variant:<8} {cells}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--pairs", type=int, default=4, help="runs of each variant (default 4)")
    p.add_argument("--duration", type=int, default=20, help="seconds of load a run")
    p.add_argument("--confirm-mode", choices=("redis", "postgres"), default="redis")
    args = p.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="flashsale-outbox-buys."))
    try:
        trees = make_trees(workdir)
        runs: dict[str, list[dict[str, float]]] = {"with": [], "without": []}
        order = ["with", "without", "without", "with"] * ((args.pairs + 1) // 2)
        for i, variant in enumerate(order[: 2 * args.pairs]):
            log = args.outdir / f"run{i + 1:02d}-{variant}.log"
            run = one_run(trees[variant], variant, args.duration, args.confirm_mode, log)
            runs[variant].append(run)
            show(variant, run)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    means = {v: {k: statistics.mean(r[k] for r in rs) for k, _, _ in COLUMNS}
             for v, rs in runs.items()}  # fmt: skip
    print("means:")
    for variant, mean in means.items():
        show(variant, mean)
    w, wo = means["with"], means["without"]
    spread = {v: (min(r["buys_s"] for r in rs), max(r["buys_s"] for r in rs))
              for v, rs in runs.items()}  # fmt: skip
    print(f"buys/s with the outbox: {100 * (w['buys_s'] / wo['buys_s'] - 1):+.1f}% "
          f"(with {spread['with'][0]:,.0f} to {spread['with'][1]:,.0f}, without "
          f"{spread['without'][0]:,.0f} to {spread['without'][1]:,.0f})")  # fmt: skip
    extra = w["box_cpu_drained_s"] - wo["box_cpu_drained_s"]
    print(f"the machine's CPU per sold unit, until drained: {extra:+.1f} µs "
          f"({100 * extra / wo['box_cpu_drained_s']:+.1f}%); PostgreSQL's "
          f"{w['postgres_cpu_drained_s'] - wo['postgres_cpu_drained_s']:+.1f} µs, the writer's "
          f"{w['writer_cpu_drained_s'] - wo['writer_cpu_drained_s']:+.1f} µs")  # fmt: skip


if __name__ == "__main__":
    main()
