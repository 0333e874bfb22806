"""What the outbox costs, in instructions: scripts/bench-outbox runs this.

One measurement is one flashsale tree (this one, or a copy of an earlier commit given with
``--tree``), one variant (the order writer with its outbox rows, or ``without``:
``record_events`` skipped) and one number of orders:

1. a PRIVATE PostgreSQL (initdb in a temporary directory, a free port, autovacuum and JIT off
   so that nothing runs at a time of its own choosing) started under valgrind's callgrind,
   one output file per process (``--callgrind-out-file=pg.%p``: the postmaster forks a
   backend per connection and callgrind follows forks);
2. the tree's migrations, a sale and ORDERS reservations made through the engine (buy.lua on
   the local Redis, under a key prefix of its own, deleted after), PAY_SHARE of them paid
   (pay.lua), so that the sale's events stream holds what a sale leaves for the writer; these
   steps run in this process, not under valgrind, on connections whose backends are left out
   of the sums;
3. the tree's ``OrderWriter.drain`` carrying the stream to PostgreSQL, in a process of its own
   under callgrind with its instrumentation switched on only for the drain
   (``callgrind_control --instr=on``, then ``--dump``): the writer's instructions;
4. PostgreSQL stopped (fast shutdown, with its checkpoint): the instructions of the writer's
   backend (its whole life: connection start, the drain, the end) and of the server's own
   processes (postmaster, checkpointer, background writer, WAL writer...).

Per event figures come from two sizes (the difference of the totals divided by the difference
of the events: what a connection's start or the server's start costs drops out) and from the
two variants at one size (with minus without: the outbox's own cost).

    outbox_instructions.py OUTDIR [--orders N ...] [--pay-share F] [--tree NAME=PATH ...]
        [--variants with,without] [--worker-per-buy N]
    outbox_instructions.py drain ...   # the writer's side of step 3 (run by the above)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PG_BIN = Path(os.environ.get("FLASHSALE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_URL = os.environ.get("FLASHSALE_REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE = "flashsale"
START_TIMEOUT_S = 600.0
# settings that keep the server's work to what the writer asks of it
PG_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "autovacuum": "off",
    "jit": "off",
    "huge_pages": "off",
    "fsync": "on",
    "logging_collector": "off",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: as root, run them as the postgres user (by
    setpriv, which execs: the pid stays the server's)."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *command]


def totals(path: Path) -> int:
    """The instructions a callgrind output file counts (0 for a process that counted none)."""
    text = path.read_text(errors="replace")
    match = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
    return int(match[1]) if match else 0


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=600)


# ---------------------------------------------------------------- the writer's side (step 3)


async def drain_main(args: argparse.Namespace) -> None:
    """Connect, say ready, wait for "go", drain, say done, wait for "quit". The tree under
    measurement is the one on PYTHONPATH."""
    import asyncpg

    import flashsale.store.writer as writer_module
    from flashsale.engine.connection import connect_redis
    from flashsale.engine.keys import Keyspace
    from flashsale.settings import Settings
    from flashsale.store.writer import OrderWriter

    async def skip(conn: Any, rows: Any) -> None:
        return None

    if args.variant == "without":
        writer_module.record_events = skip  # type: ignore[assignment]
    settings = Settings(redis_url=REDIS_URL, database_url=args.database_url,
                        key_prefix=args.key_prefix, token_secret="x" * 48,
                        admin_token="x" * 48)  # fmt: skip
    redis = connect_redis(settings)
    pool = await asyncpg.create_pool(args.database_url, min_size=1, max_size=1)
    writer = OrderWriter(redis, pool, Keyspace(args.key_prefix),
                         batch_size=settings.writer_batch_size)  # fmt: skip
    backend = await pool.fetchval("SELECT pg_backend_pid()")
    loop = asyncio.get_running_loop()
    print(f"ready {os.getpid()} {backend} {writer_module.__file__}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    written = await writer.drain()
    print(f"done {written}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    await pool.close()
    await redis.aclose()


# ---------------------------------------------------------------- the measurement (steps 1-4)


@dataclass(frozen=True, slots=True)
class Measurement:
    tree: str
    variant: str
    orders: int
    events: int
    outbox_rows: int
    writer: int  # the writer process's instructions over the drain
    backend: int  # the writer's PostgreSQL backend, its whole life
    server: int  # PostgreSQL's own processes, their whole life

    @property
    def postgres(self) -> int:
        return self.backend + self.server


class PrivatePostgres:
    """A throwaway PostgreSQL cluster run under callgrind."""

    def __init__(self, workdir: Path, outdir: Path) -> None:
        self.datadir = workdir / "data"
        self.outdir = outdir
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log = outdir / "valgrind.log"
        self.server_log = outdir / "postgres.log"

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.datadir.parent, "postgres", "postgres")
            shutil.chown(self.outdir, "postgres", "postgres")
        subprocess.run(
            as_postgres([str(PG_BIN / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                         "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]),
            check=True, capture_output=True,
        )  # fmt: skip
        with (self.datadir / "postgresql.conf").open("a") as conf:
            for name, value in {
                **PG_SETTINGS,
                "port": str(self.port),
                "unix_socket_directories": f"'{self.datadir}'",
            }.items():
                conf.write(f"{name} = {value}\n")  # fmt: skip
        self.process = subprocess.Popen(
            as_postgres(["valgrind", "--tool=callgrind", "--trace-children=yes",
             # a forked child starts with its parent's counts: zero them as it starts
             "--zero-before=InitPostmasterChild", "--zero-before=AutoVacLauncherMain",
             "--zero-before=StartBackgroundWorker",
             f"--callgrind-out-file={self.outdir}/pg.%p", "--log-file=" + str(self.log),
             str(PG_BIN / "postgres"), "-D", str(self.datadir)]),
            stdout=subprocess.DEVNULL, stderr=self.server_log.open("w"), start_new_session=True,
        )  # fmt: skip

    async def wait_ready(self) -> None:
        """Wait for the server's log to say it is ready: a connection tried earlier would be a
        backend of its own, refused, and one more process in the sums."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while "ready to accept connections" not in self.server_log.read_text(errors="replace"):
            assert self.process is not None
            if self.process.poll() is not None:
                raise SystemExit(f"PostgreSQL under valgrind ended; see {self.server_log}")
            if time.monotonic() > deadline:
                raise SystemExit(f"PostgreSQL did not start; see {self.server_log}")
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)  # fast shutdown: its checkpoint, then exit
        try:
            self.process.wait(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


async def prepare(pg: PrivatePostgres, tree: Path, orders: int, pay_share: float,
                  key_prefix: str) -> tuple[set[int], str]:  # fmt: skip
    """Database, migrations, sale and its events; the backend pids used, and the sale's id."""
    import asyncpg
    import outbox_cost  # scripts/bench/outbox_cost.py: the same sale and fill

    from flashsale.engine.connection import connect_redis
    from flashsale.engine.engine import Engine
    from flashsale.engine.keys import Keyspace
    from flashsale.settings import Settings
    from flashsale.store.migrate import load_migrations, migrate, migration_parameters

    used: set[int] = set()
    admin = await asyncpg.connect(pg.url.rsplit("/", 1)[0] + "/postgres")
    used.add(await admin.fetchval("SELECT pg_backend_pid()"))
    await admin.execute(f"CREATE DATABASE {DATABASE}")
    await admin.close()
    conn = await asyncpg.connect(pg.url)
    used.add(await conn.fetchval("SELECT pg_backend_pid()"))
    await migrate(conn, load_migrations(tree / "flashsale" / "store" / "migrations"),
                  parameters=migration_parameters(default_currency="USD"))  # fmt: skip
    await conn.close()
    settings = Settings(redis_url=REDIS_URL, database_url=pg.url, key_prefix=key_prefix,
                        token_secret="x" * 48, admin_token="x" * 48)  # fmt: skip
    redis = connect_redis(settings)
    engine = Engine(redis, Keyspace(key_prefix), sold_out_recheck_s=0.1,
                    idempotency_ttl_s=settings.idempotency_ttl_s)  # fmt: skip
    pool = await asyncpg.create_pool(pg.url, min_size=1, max_size=1)
    try:
        used.add(await pool.fetchval("SELECT pg_backend_pid()"))
        sale_id = await outbox_cost._fill(engine, pool, orders, pay_share)
    finally:
        await pool.close()
        await redis.aclose()
    return used, sale_id


async def count_rows(pg: PrivatePostgres, sale_id: str) -> tuple[int, int]:
    import asyncpg

    conn = await asyncpg.connect(pg.url)
    try:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        rows = await conn.fetchval("SELECT count(*) FROM outbox WHERE sale_id = $1", sale_id)
        return pid, rows
    finally:
        await conn.close()


async def delete_keys(prefix: str) -> None:
    from flashsale.engine.connection import connect_redis
    from flashsale.settings import Settings

    redis = connect_redis(Settings(redis_url=REDIS_URL, database_url="postgresql://x/x",
                                   key_prefix=prefix, token_secret="x" * 48,
                                   admin_token="x" * 48))  # fmt: skip
    keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=2000)]
    for i in range(0, len(keys), 2000):
        await redis.unlink(*keys[i : i + 2000])
    await redis.aclose()


def measure(outroot: Path, tree_name: str, tree: Path, variant: str, orders: int,
            pay_share: float) -> Measurement:  # fmt: skip
    label = f"{tree_name}-{variant}-{orders}"
    outdir = outroot / label
    outdir.mkdir(parents=True)
    key_prefix = f"bench-ob-{secrets.token_hex(4)}"
    workdir = Path(tempfile.mkdtemp(prefix="flashsale-bench-outbox-"))
    pg = PrivatePostgres(workdir, outdir)
    writer: subprocess.Popen[str] | None = None
    try:
        pg.start()
        asyncio.run(pg.wait_ready())
        used, sale_id = asyncio.run(prepare(pg, tree, orders, pay_share, key_prefix))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
        env.update(PYTHONPATH=str(tree), PYTHONHASHSEED="0", FLASHSALE_REDIS_URL=REDIS_URL)
        writer = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={outdir}/writer.%p", f"--log-file={outdir}/writer.log",
             sys.executable, __file__, "drain", "--database-url", pg.url,
             "--key-prefix", key_prefix, "--variant", variant],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert writer.stdin is not None
        assert writer.stdout is not None
        ready = writer.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise SystemExit(f"the writer did not start; see {outdir}/writer.log")
        writer_pid, backend_pid, module = int(ready[1]), int(ready[2]), ready[3]
        if not module.startswith(str(tree)):
            raise SystemExit(f"the writer ran {module}, not the tree {tree}")
        callgrind_control("--instr=on", str(writer_pid))
        writer.stdin.write("go\n")
        writer.stdin.flush()
        done = writer.stdout.readline().split()
        callgrind_control("--dump", str(writer_pid))
        events = int(done[1])
        writer.stdin.write("quit\n")
        writer.stdin.flush()
        writer.wait(timeout=START_TIMEOUT_S)
        count_pid, rows = asyncio.run(count_rows(pg, sale_id))
        used.add(count_pid)
        pg.stop()
        writer_dumps = sorted(outdir.glob(f"writer.{writer_pid}.*"),
                              key=lambda p: p.stat().st_mtime)  # fmt: skip
        writer_instructions = totals(writer_dumps[0])
        backend = totals(outdir / f"pg.{backend_pid}")
        server = sum(
            totals(p)
            for p in outdir.glob("pg.*")
            if int(p.name.split(".")[1]) not in used | {backend_pid}
        )
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        asyncio.run(delete_keys(key_prefix))
    m = Measurement(tree_name, variant, orders, events, rows, writer_instructions, backend,
                    server)  # fmt: skip
    print(f"BENCH {label}: {events:,} events, {rows:,} outbox rows; instructions: writer "
          f"{m.writer:,}, PostgreSQL backend {m.backend:,}, server processes {m.server:,}",
          flush=True)  # fmt: skip
    return m


def per_event(a: Measurement, b: Measurement, field: str) -> float:
    """Instructions per event of ``field`` between two sizes of the same tree and variant."""
    return (getattr(b, field) - getattr(a, field)) / (b.events - a.events)


def report(results: list[Measurement], worker_per_buy: float | None) -> None:
    fields = ("writer", "backend", "server", "postgres")
    trees = list(dict.fromkeys(m.tree for m in results))
    variants = list(dict.fromkeys(m.variant for m in results))
    sizes = sorted({m.orders for m in results})
    found = {(m.tree, m.variant, m.orders): m for m in results}
    print("\nper event, from the two extreme sizes (slope):")
    slopes: dict[tuple[str, str], dict[str, float]] = {}
    for tree in trees:
        for variant in variants:
            small, large = (
                found.get((tree, variant, sizes[0])),
                found.get((tree, variant, sizes[-1])),
            )
            if small is None or large is None or small is large:
                continue
            slopes[tree, variant] = {f: per_event(small, large, f) for f in fields}
            s = slopes[tree, variant]
            print(f"  {tree:>8} {variant:>7}: writer {s['writer']:>9,.0f}, PostgreSQL backend "
                  f"{s['backend']:>9,.0f}, server processes {s['server']:>7,.0f}, "
                  f"PostgreSQL {s['postgres']:>9,.0f}, together "
                  f"{s['writer'] + s['postgres']:>9,.0f}")  # fmt: skip
    print("\nthe outbox's own cost per event (with minus without, same size):")
    for tree in trees:
        for size in sizes:
            w, wo = found.get((tree, "with", size)), found.get((tree, "without", size))
            if w is None or wo is None:
                continue
            d = {f: (getattr(w, f) - getattr(wo, f)) / w.events for f in fields}
            together = d["writer"] + d["postgres"]
            print(f"  {tree:>8} {size:>7,} orders: writer {d['writer']:>8,.0f}, PostgreSQL "
                  f"{d['postgres']:>8,.0f} (backend {d['backend']:,.0f}, server "
                  f"{d['server']:,.0f}), together {together:>8,.0f}")  # fmt: skip
    if worker_per_buy is None:
        return
    if any(m.outbox_rows not in (0, m.events) for m in results):
        print("\n(not against the pipeline: with payments, events are not one per buy)")
        return
    print(f"\nagainst the whole pipeline of an order change: the HTTP worker's buy "
          f"({worker_per_buy:,.0f}) + the writer and PostgreSQL without the outbox "
          "(slope):")  # fmt: skip
    for tree in trees:
        w, wo = slopes.get((tree, "with")), slopes.get((tree, "without"))
        if w is None or wo is None:
            continue
        pipeline = worker_per_buy + wo["writer"] + wo["postgres"]
        extra = w["writer"] + w["postgres"] - wo["writer"] - wo["postgres"]
        print(f"  {tree:>8}: pipeline {pipeline:,.0f}, the outbox {extra:,.0f} more: "
              f"{100 * extra / pipeline:+.1f} %")  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "drain":
        p = argparse.ArgumentParser(prog="outbox_instructions.py drain")
        p.add_argument("--database-url", required=True)
        p.add_argument("--key-prefix", required=True)
        p.add_argument("--variant", choices=["with", "without"], required=True)
        asyncio.run(drain_main(p.parse_args(sys.argv[2:])))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", type=Path)
    p.add_argument("--orders", type=int, nargs="+", default=[1000, 3000])
    p.add_argument("--pay-share", type=float, default=0.0)
    p.add_argument(
        "--tree",
        action="append",
        default=[],
        help="NAME=PATH of a flashsale tree to measure (default: this one)",
    )
    p.add_argument("--variants", default="with,without")
    p.add_argument("--worker-per-buy", type=float,
                   help="the HTTP worker's instructions per buy (scripts/bench-metrics): "
                   "adds the outbox's share of the whole pipeline")  # fmt: skip
    args = p.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    here = Path(__file__).resolve().parents[2]
    trees = [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.tree]
    trees = trees or [("this", here)]
    results = []
    for orders in args.orders:
        for tree_name, tree in trees:
            for variant in args.variants.split(","):
                results.append(
                    measure(args.outdir, tree_name, tree, variant, orders, args.pay_share)
                )
    report(results, args.worker_per_buy)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
