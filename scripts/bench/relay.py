"""What delivering order events costs the relay: N events in a database of their own, delivered
by the relay (one or more processes) to a receiver in a process of its own.

Each run makes a fresh database on the local PostgreSQL (``flashsale_bench_relay_<tag>_<n>``,
migrated by the variant's own flashsale, dropped after the run), registers the receiver, and
fills the outbox through ``record_events`` the way the order writer does: transactions of 500
order changes, each order reserved in one and, for nine in ten orders, paid two transactions
later. Then it starts the relay processes (``flashsale.cli.relay.run_relay``, as ``flashsale
relay`` and ``serve`` run it), lets them go together and waits until the receiver has every
event and PostgreSQL no pending delivery. It prints, per run: events/s (wall clock), the CPU of
the relay processes, of their PostgreSQL backends and of the receiver per event (from /proc,
so PostgreSQL must run on this machine), and what the receiver saw twice or out of order.

Variants are a flashsale tree each: this one ("new") and, with ``--baseline REV``, that
revision's ``flashsale/`` unpacked by ``git archive`` ("base"); runs alternate between the
variants (ABBA...) so that their ratios compare neighbours on a noisy machine. ``--busy K``
keeps K processes spinning on the CPU during each delivery (a sale keeping the cores busy).
``--callgrind N`` adds, per variant, one run of N events with one relay under ``valgrind
--tool=callgrind``, instrumented from the moment it is let go: instructions per event, which
vary little here.

    PYTHONPATH=. .venv/bin/python scripts/bench/relay.py [--events N] [--rounds R]
        [--processes 1,2] [--baseline REV] [--batch-size B] [--busy K] [--callgrind N]
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
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]
SERVER = os.environ.get("FLASHSALE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TICKS = os.sysconf("SC_CLK_TCK")
WRITER_BATCH = 500  # order changes a transaction, as the order writer's default batch
PAY_SHARE = 0.9
PAY_LAG = 2  # transactions between an order's reservation and its payment


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


# ---------------------------------------------------------------- children (run as -c modes)


async def _fill(database_url: str, receiver_url: str, events: int) -> None:
    """Migrate the database, register the receiver, and record ``events`` order events."""
    from flashsale.models import SaleDefinition
    from flashsale.outbox import receivers
    from flashsale.outbox.events import record_events
    from flashsale.store import sales
    from flashsale.store.database import open_pool
    from flashsale.store.migrate import migration_parameters
    from flashsale.store.orders import OrderRow

    pool = await open_pool(database_url, max_size=2,
                           parameters=migration_parameters(default_currency="USD"))  # fmt: skip
    now = int(time.time() * 1000)
    sale_id = "bench-relay"
    await sales.insert_sale(pool, SaleDefinition(
        sale_id=sale_id, sku="bench-relay", name="bench relay", price_cents=1990, stock=10**7,
        per_user_limit=1, starts_ms=now - 1000, ends_ms=now + 3_600_000, reservation_ttl_s=600,
    ))  # fmt: skip
    await receivers.register(pool, receiver_url)

    def row(i: int, status: str, version: int) -> OrderRow:
        return OrderRow(
            order_id=f"{sale_id}-o{i:08d}", sale_id=sale_id, user_id=f"user-{i:08d}",
            quantity=1, status=status, version=version, expires_ms=now + 600_000,
            created_ms=now + i, updated_ms=now + i + version,
        )  # fmt: skip

    orders = round(events / (1 + PAY_SHARE))
    paid = events - orders
    per_tx = round(WRITER_BATCH / (1 + PAY_SHARE))  # reservations a transaction
    batches: list[list[OrderRow]] = []
    for start in range(0, orders, per_tx):
        batches.append([row(i, "reserved", 1) for i in range(start, min(start + per_tx, orders))])
    for b in range(len(batches) + PAY_LAG):  # the payments of batch b - PAY_LAG's orders
        if b >= len(batches):
            batches.append([])
        if b >= PAY_LAG:
            first = (b - PAY_LAG) * per_tx
            batches[b] += [row(i, "paid", 2) for i in range(first, min(first + per_tx, paid))]
    written = 0
    for batch in batches:
        async with pool.acquire() as conn, conn.transaction():
            await record_events(conn, batch)
        written += len(batch)
    count = await pool.fetchval("SELECT count(*) FROM outbox")
    assert count == events == written, (count, events, written)
    await pool.close()


def _relay_child(database_url: str, receiver_url: str, secret: str, batch_size: int) -> None:
    """A relay as serve's relay process runs it, let go by a line on stdin."""
    from dataclasses import fields as dataclass_fields

    from flashsale.cli.relay import run_relay
    from flashsale.cli.serve import new_event_loop
    from flashsale.logs import setup_logging
    from flashsale.settings import Settings

    setup_logging()
    values: dict[str, Any] = {
        "database_url": database_url, "webhook_urls": (receiver_url,),
        "webhook_secret": secret, "metrics": False,
    }  # fmt: skip
    if batch_size and "webhook_batch_size" in {f.name for f in dataclass_fields(Settings)}:
        values["webhook_batch_size"] = batch_size
    settings = Settings(**values)
    print("ready", flush=True)
    sys.stdin.readline()
    loop = new_event_loop()
    main = loop.create_task(run_relay(settings))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, main.cancel)
    profile_to = os.environ.get("BENCH_RELAY_PROFILE")  # a cProfile of the delivery, to here
    if profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(main)
    if profile_to:
        profiler.disable()
        profiler.dump_stats(f"{profile_to}.{os.getpid()}")
    loop.close()


def _receiver_child(secret: str) -> None:
    """flashsale's receiver (outbox/receiver.py), and a second port to ask it what it has."""
    from aiohttp import web

    from flashsale.cli.serve import new_event_loop
    from flashsale.outbox.receiver import EventReceiver

    async def main() -> None:
        receiver = EventReceiver(secret)
        url = await receiver.start()

        async def stats(request: web.Request) -> web.Response:
            arrivals = receiver.arrivals
            answer: dict[str, Any] = {"arrivals": len(arrivals), "refused": receiver.refused}
            if request.query.get("full"):
                seen: set[str] = set()
                last: dict[str | None, int] = {}
                duplicates = out_of_order = 0
                for a in arrivals:
                    if a.event_id in seen:
                        duplicates += 1
                        continue
                    seen.add(a.event_id)
                    if a.sequence is not None and a.sequence < last.get(a.order_id, 0):
                        out_of_order += 1
                    last[a.order_id] = max(last.get(a.order_id, 0), a.sequence or 0)
                answer |= {"unique": len(seen), "duplicates": duplicates,
                           "out_of_order": out_of_order}  # fmt: skip
            return web.json_response(answer)

        async def reset(request: web.Request) -> web.Response:
            receiver.arrivals.clear()
            receiver.refused = 0
            return web.json_response({})

        app = web.Application()
        app.router.add_get("/stats", stats)
        app.router.add_post("/reset", reset)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(url, f"http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    loop = new_event_loop()
    task = loop.create_task(main())
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(task)


# ---------------------------------------------------------------- the driver


@dataclass
class Variant:
    name: str
    path: Path  # the directory holding its flashsale/


@dataclass
class Run:
    variant: str
    processes: int
    events: int
    wall_s: float
    relay_cpu_s: float
    pg_cpu_s: float
    receiver_cpu_s: float
    stats: dict[str, Any] = field(default_factory=dict)
    instructions: int | None = None

    def line(self) -> str:
        e = self.events
        text = (
            f"{self.variant:>4} x{self.processes}: {e:,} events in {self.wall_s:6.2f} s = "
            f"{e / self.wall_s:7,.0f} events/s; CPU an event: relay "
            f"{1e3 * self.relay_cpu_s / e:.3f} ms, PostgreSQL {1e3 * self.pg_cpu_s / e:.3f} ms, "
            f"receiver "
            f"{1e3 * self.receiver_cpu_s / e:.3f} ms; duplicates {self.stats.get('duplicates')}, "
            f"out of order {self.stats.get('out_of_order')}, refused {self.stats.get('refused')}"
        )
        if self.instructions is not None:
            text += f"; {self.instructions / e:,.0f} instructions an event (callgrind)"
        return text


class Db:
    """A synchronous asyncpg connection (the driver runs processes, not coroutines)."""

    def __init__(self, url: str) -> None:
        import asyncpg

        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(url))

    def fetchval(self, sql: str, *args: Any) -> Any:
        return self.loop.run_until_complete(self.conn.fetchval(sql, *args))

    def column(self, sql: str, *args: Any) -> list[Any]:
        return [r[0] for r in self.loop.run_until_complete(self.conn.fetch(sql, *args))]

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


def _child(variant: Variant, call: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
    """``relay.<call>`` in a Python of the variant's flashsale (its directory first on the
    path, and the working directory: ``-c`` puts that first)."""
    env = {**os.environ, "PYTHONPATH": f"{variant.path}:{REPO / 'scripts' / 'bench'}"}
    prefix = kw.pop("prefix", [])
    return subprocess.Popen(
        [*prefix, sys.executable, "-c", f"import asyncio, sys, relay; {call}", *args],
        env=env, text=True, cwd=variant.path, **kw,
    )  # fmt: skip


def _get(url: str, method: str = "GET") -> dict[str, Any]:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as resp:
        answer: dict[str, Any] = orjson.loads(resp.read())
        return answer


def _backends(admin: Db, database: str) -> list[int]:
    return admin.column(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'"
        " AND pid <> pg_backend_pid()",
        database,
    )


_UNDELIVERED = """
SELECT (SELECT count(*) FROM outbox_deliveries WHERE delivered_at IS NULL AND gave_up_at IS NULL)
     + (SELECT count(*) FROM outbox o JOIN webhook_receivers w
        ON (o.txid, o.id) > (w.cursor_txid, w.cursor_id))
"""


def one_run(
    variant: Variant, processes: int, events: int, receiver: tuple[str, str, int], secret: str,
    batch_size: int, busy: int, callgrind: bool, tag: str, number: int,
) -> Run:  # fmt: skip
    receiver_url, control_url, receiver_pid = receiver
    database = f"flashsale_bench_relay_{tag}_{number}"
    database_url = SERVER.rsplit("/", 1)[0] + "/" + database
    admin = Db(SERVER)
    admin.fetchval(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    admin.fetchval(f'CREATE DATABASE "{database}"')
    spinners: list[subprocess.Popen[str]] = []
    relays: list[subprocess.Popen[str]] = []
    out_files: list[Path] = []
    watch: Db | None = None
    try:
        fill = _child(variant, "asyncio.run(relay._fill(*sys.argv[1:3], int(sys.argv[3])))",
                      database_url, receiver_url, str(events))  # fmt: skip
        if fill.wait() != 0:
            raise SystemExit("bench-relay: filling the outbox failed")
        _get(control_url + "/reset", "POST")
        for _ in range(processes):
            prefix: list[str] = []
            if callgrind:
                out = Path(tempfile.mkstemp(prefix="bench-relay-callgrind.")[1])
                out_files.append(out)
                prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                          f"--callgrind-out-file={out}"]  # fmt: skip
            relays.append(_child(
                variant, "relay._relay_child(*sys.argv[1:4], int(sys.argv[4]))",
                database_url, receiver_url, secret, str(batch_size),
                prefix=prefix, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            ))  # fmt: skip
        for r in relays:
            assert r.stdout is not None
            if r.stdout.readline().strip() != "ready":
                raise SystemExit("bench-relay: a relay did not start")
        for r in relays if callgrind else []:
            subprocess.run(["callgrind_control", "-i", "on", str(r.pid)], check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip
        for _ in range(busy):
            spinners.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        watch = Db(database_url)
        relay0 = sum(cpu_s(r.pid) for r in relays)
        receiver0 = cpu_s(receiver_pid)
        t0 = time.perf_counter()
        for r in relays:
            assert r.stdin is not None
            r.stdin.write("go\n")
            r.stdin.flush()
        backends: dict[int, float] = {}  # CPU seconds of each backend of the relays, last seen
        while True:
            time.sleep(0.05)
            backends |= {pid: cpu_s(pid) for pid in _backends(admin, database)}
            if _get(control_url + "/stats")["arrivals"] < events:
                if any(r.poll() is not None for r in relays):
                    raise SystemExit("bench-relay: a relay exited")
                continue
            if watch.fetchval(_UNDELIVERED) == 0:
                wall = time.perf_counter() - t0
                break
        relay_cpu = sum(cpu_s(r.pid) for r in relays) - relay0
        receiver_cpu = cpu_s(receiver_pid) - receiver0
        backends |= {pid: cpu_s(pid) for pid in _backends(admin, database)}
        # the watcher's own backend is not the relays'
        mine = watch.fetchval("SELECT pg_backend_pid()")
        pg_cpu = sum(cpu for pid, cpu in backends.items() if pid != mine)
        stats = _get(control_url + "/stats?full=1")
    finally:
        for s in spinners:
            s.kill()
            s.wait()
        for r in relays:
            if r.poll() is None:
                r.send_signal(signal.SIGTERM)
        for r in relays:
            try:
                r.wait(timeout=120)
            except subprocess.TimeoutExpired:
                r.kill()
                r.wait()
        if watch is not None:
            watch.close()
        admin.fetchval(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
    instructions = None
    if callgrind:
        instructions = sum(_callgrind_total(out) for out in out_files)
        for out in out_files:
            if os.environ.get("BENCH_RELAY_KEEP_CALLGRIND"):  # for callgrind_annotate
                print(f"callgrind output kept: {out}")
            else:
                out.unlink(missing_ok=True)
    return Run(variant.name, processes, events, wall, relay_cpu, pg_cpu, receiver_cpu, stats,
               instructions)  # fmt: skip


def _callgrind_total(path: Path) -> int:
    text = path.read_text(errors="replace")
    match = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
    return int(match[1]) if match else 0


def _baseline(rev: str) -> Path:
    where = Path(tempfile.mkdtemp(prefix="bench-relay-base."))
    archive = subprocess.run(["git", "archive", rev, "flashsale"], cwd=REPO, check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def _start_receiver(
    secret: str, variant: Variant | None = None
) -> tuple[subprocess.Popen[str], tuple[str, str, int]]:
    variant = variant or Variant("new", REPO)
    proc = _child(variant, "relay._receiver_child(sys.argv[1])", secret,
                  stdout=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None
    url, control = proc.stdout.readline().split()
    return proc, (url, control, proc.pid)


async def _post_signed(url: str, secret: str, events: int) -> float:
    """POST ``events`` signed order events to ``url`` as the relay does (its sender, 50 at
    once); the seconds it took."""
    from flashsale.outbox.sender import Sender
    from flashsale.webhooks.signing import headers_for, parse_secret

    key = parse_secret(secret)
    sender = Sender(url, timeout_s=10, connections=50, user_agent="bench-relay")
    now = int(time.time())
    messages = []
    for i in range(events):
        body = orjson.dumps({"type": "order.reserved", "timestamp": "2026-12-02T00:00:00.000Z",
                             "data": {"order_id": f"bench-o{i:08d}", "sale_id": "bench",
                                      "user_id": f"user-{i}", "sequence": 1,
                                      "status": "reserved", "quantity": 1,
                                      "amount_cents": 1990, "currency": "USD"}})  # fmt: skip
        messages.append((headers_for(key, f"evt_{i:032x}", now, body), body))
    start = time.perf_counter()
    for i in range(0, events, 200):
        answers = await sender.post_many(messages[i : i + 200])
        assert all(a.ok for a in answers), answers[0]
    sender.close()
    return time.perf_counter() - start


def receivers_only(variants: list[Variant], events: int, rounds: int) -> None:
    """The receiver (outbox/receiver.py) of each variant alone: its CPU an event, driven by
    the relay's sender from this process (no PostgreSQL)."""
    from flashsale.webhooks.signing import new_secret

    secret = new_secret()
    for r in range(rounds):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            proc, (url, control, pid) = _start_receiver(secret, variant)
            try:
                cpu0 = cpu_s(pid)
                wall = asyncio.run(_post_signed(url, secret, events))
                cpu = cpu_s(pid) - cpu0
                got = _get(control + "/stats")
            finally:
                proc.terminate()
                proc.wait()
            print(f"round {r + 1} receiver {variant.name:>4}: {events:,} events in {wall:.2f} s "
                  f"= {events / wall:,.0f} events/s; receiver CPU an event "
                  f"{1e3 * cpu / events:.3f} ms; {got['arrivals']:,} recorded, "
                  f"{got['refused']} refused", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--processes", default="1", help="relay processes, e.g. 1,2")
    p.add_argument("--baseline", metavar="REV", help="compare with this revision's flashsale/")
    p.add_argument("--only", choices=["new", "base"], help="run one variant only")
    p.add_argument("--batch-size", type=int, default=0, help="FLASHSALE's default if 0")
    p.add_argument("--busy", type=int, default=0, help="spinning processes during delivery")
    p.add_argument(
        "--receiver-only",
        action="store_true",
        help="measure the receivers alone (outbox/receiver.py of each variant)",
    )
    p.add_argument("--callgrind", type=int, default=0, metavar="N",
                   help="one run of N events per variant under callgrind, one relay")  # fmt: skip
    args = p.parse_args()
    from flashsale import __version__
    from flashsale.webhooks.signing import new_secret

    variants = [Variant("new", REPO)]
    base_dir = None
    if args.baseline:
        base_dir = _baseline(args.baseline)
        variants.insert(0, Variant("base", base_dir))
    if args.only:
        variants = [v for v in variants if v.name == args.only]
    counts = [int(n) for n in args.processes.split(",")]
    if args.receiver_only:
        print(f"bench-relay: receivers alone, {args.events:,} events a run, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)  # fmt: skip
        try:
            receivers_only(variants, args.events, args.rounds)
        finally:
            if base_dir is not None:
                shutil.rmtree(base_dir, ignore_errors=True)
        return
    secret = new_secret()
    tag = secrets.token_hex(3)
    receiver_proc, receiver = _start_receiver(secret)
    load = os.getloadavg()
    print(f"bench-relay: flashsale {__version__}, {args.events:,} events a run "
          f"({PAY_SHARE:.0%} of orders paid), batch size {args.batch_size or 'default'}, "
          f"busy {args.busy}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
          + (f", baseline {args.baseline}" if args.baseline else ""), flush=True)  # fmt: skip
    runs: list[Run] = []
    number = 0
    try:
        cases = [(v, k) for v in variants for k in counts]
        for r in range(args.rounds):
            for variant, k in cases if r % 2 == 0 else cases[::-1]:
                number += 1
                run = one_run(variant, k, args.events, receiver, secret, args.batch_size,
                                    args.busy, False, tag, number)  # fmt: skip
                runs.append(run)
                print(f"round {r + 1} {run.line()}", flush=True)
        for variant in variants if args.callgrind else []:
            number += 1
            run = one_run(variant, 1, args.callgrind, receiver, secret, args.batch_size,
                                0, True, tag, number)  # fmt: skip
            runs.append(run)
            print(f"callgrind {run.line()}", flush=True)
    finally:
        receiver_proc.terminate()
        receiver_proc.wait()
        if base_dir is not None:
            shutil.rmtree(base_dir, ignore_errors=True)
    timed = [r for r in runs if r.instructions is None]
    print("medians:")
    for variant in variants:
        for k in counts:
            mine = [r for r in timed if r.variant == variant.name and r.processes == k]
            if mine:
                print(f"  {variant.name:>4} x{k}: "
                      f"{statistics.median(r.events / r.wall_s for r in mine):,.0f} events/s, "
                      f"relay {statistics.median(1e3 * r.relay_cpu_s / r.events for r in mine):.3f}"
                      f" ms, PostgreSQL "
                      f"{statistics.median(1e3 * r.pg_cpu_s / r.events for r in mine):.3f} ms an"
                      " event")  # fmt: skip
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
