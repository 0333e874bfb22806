"""The rehearsal, start to end: servers, setup, the crowd, the verdict, the report.

    python -m loadtest.rehearsal --preset small --out out/rehearsal-small

Exit codes: 0 the verdict holds, 1 it does not (or the rehearsal could not run), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from loadtest.plan import Plan
from loadtest.rehearsal import identities, setup
from loadtest.rehearsal.api import Api
from loadtest.rehearsal.chart import draw_chart
from loadtest.rehearsal.environment import ConfigError, Environment, resolve
from loadtest.rehearsal.locust_run import STARTUP_S, run_locust
from loadtest.rehearsal.options import Sizes, parse_args, sizes
from loadtest.rehearsal.processes import (
    CpuSampler,
    free_port,
    serve_command,
    start,
    stop,
    wait_http,
)
from loadtest.rehearsal.records_in import read_records
from loadtest.rehearsal.report import build_report
from loadtest.rehearsal.report_text import render
from loadtest.rehearsal.stores import delete_keys, drop_database, redis_pid
from loadtest.rehearsal.verdict import judge


def say(message: str) -> None:
    print(f"launch-rehearsal: {message}", flush=True)


class Service:
    """The service under test: the one named by --service, or `flashsale serve` started here."""

    def __init__(self, args: argparse.Namespace, env: Environment, out: Path) -> None:
        self.proc = None
        self.processes = 0  # 0: not ours, unknown
        if args.service:
            self.url = args.service.rstrip("/")
        else:
            port = free_port()
            cmd, self.processes = serve_command(port, args.service_workers)
            self.url = f"http://127.0.0.1:{port}"
            self.log = out / "service.log"
            self.log.write_text("")
            self.proc = start(cmd, self.log, env.env)
            say(f"started `{' '.join(cmd[1:])}` ({self.processes} process(es))")
        alive = (lambda: self.proc.poll() is None) if self.proc else (lambda: True)
        problem = wait_http(f"{self.url}/healthz", 60, alive)
        if problem is not None:
            raise RuntimeError(f"the service at {self.url} is not healthy: {problem}")

    def log_problems(self) -> int | None:
        if self.proc is None:
            return None
        pattern = re.compile(r"ERROR|CRITICAL|Traceback|WARNING")
        return sum(
            1 for line in self.log.read_text(errors="replace").splitlines() if pattern.search(line)
        )

    def stop(self) -> None:
        stop(self.proc, timeout_s=15)


def prepare(
    args: argparse.Namespace, env: Environment, api: Api, out: Path, n: Sizes
) -> tuple[setup.SaleSetup, Plan, float]:
    """Mint the crowd's tokens, create the sale, import the bookings, issue the F-codes."""
    rng = random.Random(args.seed)
    lottery_seed = f"rehearsal-{rng.getrandbits(64):016x}"
    pool_dir = out / "pool"
    started = time.perf_counter()
    buyers, pollers = identities.choose_bookers(args.admission, args.bookers, n, rng, lottery_seed)
    minted = identities.write_crowd_pools(pool_dir, env.token_secret, buyers, pollers, n.walk_ins)
    mint_s = time.perf_counter() - started
    lead_s = STARTUP_S + args.ramp
    setup_s = setup.setup_seconds(args, n, lead_s)
    sale = setup.create_sale(api, args, n, setup_s, lottery_seed)
    sale.timings["mint_tokens_s"] = round(mint_s, 2)
    say(
        f"sale {sale.sale_id} created, opening in {sale.opens_at - time.time():.0f} s; "
        f"{minted:,} tokens minted in {mint_s:.1f} s"
    )
    log = out / "setup.log"
    setup.import_bookings(sale, args.bookers, pool_dir, env.env, log)
    say(f"{args.bookers:,} bookings imported in {sale.timings['import_bookings_s']:.1f} s")
    setup.issue_fcodes(sale, n.codes, pool_dir, env.env, log)
    identities.write_fcode_pool(pool_dir, env.token_secret, sale.fcodes)
    plan = Plan(
        base_url=api.base,
        sale_id=sale.sale_id,
        stock=args.stock,
        per_user_limit=args.per_user_limit,
        admission=args.admission,
        opens_at=sale.opens_at,
        campaign=setup.CAMPAIGN,
        pool_dir=str(pool_dir),
        record_dir=str(out / "records"),
        locust_processes=max(1, args.locust_workers),
        users=args.users,
        fcode_users=n.fcode_users,
        bot_users=n.bot_users,
        ramp_s=args.ramp,
        drain_s=args.drain,
        max_s=lead_s + args.max,
        pay_share=args.pay_share,
        checkout_s=args.checkout,
        double_click_share=args.double_click_share,
        walk_in_share=args.walk_in_share,
        sold_out_retries=2,
        poll_interval_s=1.0,
    )
    return sale, plan, lead_s


def run(args: argparse.Namespace, env: Environment, out: Path) -> int:
    n = sizes(args)
    service = Service(args, env, out)
    try:
        api = Api(service.url, env.admin_token)
        sale, plan, lead_s = prepare(args, env, api, out, n)
        plan_path = out / "plan.json"
        plan.save(plan_path)
        wait_s = sale.opens_at - lead_s - time.time()
        if wait_s > 0:
            say(f"setup done; the crowd gathers in {wait_s:.1f} s")
            time.sleep(wait_s)
        else:
            say(f"setup overran the planned opening by {-wait_s:.1f} s; the crowd goes now")
        cpu = CpuSampler()
        if service.proc is not None:
            cpu.add_tree("service", service.proc.pid)
        if (pid := redis_pid(env.redis_url)) is not None:
            cpu.add_tree("redis", pid)
        cpu.add_named("postgres (all on this machine)", "postgres")
        cpu.add_machine("whole machine")
        opening = time.strftime("%H:%M:%S", time.localtime(sale.opens_at))
        say(f"the crowd: {args.users:,} users; the sale opens at {opening}")
        load_before = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
        crowd_started = time.time()
        cpu.start()
        try:
            locust = run_locust(
                out, service.url, plan_path, env.env, workers=args.locust_workers, web=args.web,
                web_port=args.web_port, timeout_s=lead_s + args.max + args.drain + 60,
                on_start=lambda pid: cpu.add_tree("locust", pid),
            )  # fmt: skip
        finally:
            cpu.stop()
        records = read_records(out / "records")
        verdict = asyncio.run(judge(api, env.database_url, plan, records))
        extra = _extra(args, env, n, sale, service, locust.exit_code)
        report = build_report(plan, records, verdict, extra)
        sale_end = report["timing"]["sellout_at"] or time.time()
        during = cpu.cores(report["timing"]["opened_at"], sale_end)
        report["cpu_cores"] = {
            "during_sale": during,
            "whole_crowd": cpu.cores(crowd_started, time.time()),
        }
        report["locust_cpu_warning"] = any(
            "CPU usage above" in log.read_text(errors="replace") for log in out.glob("locust*.log")
        )
        # a Locust process is one event loop sharing this machine's cores with the service:
        # well before a whole core its requests queue up behind each other (measured: 2 workers
        # instead of 1 raised the small preset's buys/s by 60% at 0.7 cores)
        report["generator_bound"] = report["locust_cpu_warning"] or (
            during.get("locust", 0) >= 0.6 * plan.locust_processes
        )
        report["load_average_before"] = load_before
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        draw_chart(out / "chart.png", records, report["timing"]["opened_at"], report)
        print(render(report))
        print(f"report: {out / 'report.json'}, chart: {out / 'chart.png'}, "
              f"Locust's own: {locust.html}, logs: {out}")  # fmt: skip
        return 0 if not verdict.violations else 1
    finally:
        service.stop()


def _extra(
    args: argparse.Namespace,
    env: Environment,
    n: Sizes,
    sale: setup.SaleSetup,
    service: Service,
    locust_exit: int,
) -> dict[str, Any]:
    return {
        "settings": {
            "preset": args.preset,
            "admission": args.admission,
            "bookers": args.bookers,
            "stock": args.stock,
            "fcode_stock": n.fcode_stock,
            "codes": n.codes,
            "per_user_limit": args.per_user_limit,
            "tokens": n.tokens,
            "users": args.users,
            "fcode_users": n.fcode_users,
            "bot_users": n.bot_users,
            "ramp_s": args.ramp,
            "drain_s": args.drain,
            "max_s": args.max,
            "pay_share": args.pay_share,
            "checkout_s": args.checkout,
            "double_click_share": args.double_click_share,
            "walk_in_share": args.walk_in_share,
            "no_shows": n.no_shows,
            "locust_processes": max(1, args.locust_workers),
            "service_url": service.url,
            "service_started_here": service.proc is not None,
            "service_processes": service.processes or "?",
            "key_prefix": env.key_prefix,
            "database": env.database_name,
            "opens_at": sale.opens_at,
        },
        "setup": sale.timings,
        "bookings_import": sale.imported,
        "locust_exit_code": locust_exit,
        "machine_cores": os.cpu_count(),
        "service_log_problems": service.log_problems(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("records", "pool"):  # a previous run's records would be counted again
        shutil.rmtree(out / stale, ignore_errors=True)
    try:
        env = resolve(external_service=bool(args.service))
    except ConfigError as exc:
        print(f"launch-rehearsal: {exc}", file=sys.stderr)
        return 2
    say(
        f"preset {args.preset}: stock {args.stock:,}, {args.bookers:,} booked shoppers, "
        f"admission {args.admission}; Redis {env.redis_url} prefix {env.key_prefix}, "
        f"database {env.database_name}; output {out}"
    )
    try:
        return run(args, env, out)
    except Exception as exc:  # a rehearsal that could not run is a failed one, said plainly
        print(f"launch-rehearsal: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        _clean_up(args, env, out)


def _clean_up(args: argparse.Namespace, env: Environment, out: Path) -> None:
    try:
        _remove_what_we_made(args, env, out)
    except Exception as exc:  # the verdict stands; say what was left behind
        print(f"launch-rehearsal: clean-up failed: {exc!r}", file=sys.stderr)


def _remove_what_we_made(args: argparse.Namespace, env: Environment, out: Path) -> None:
    if args.keep:
        say(f"kept: database {env.database_name}, Redis keys {env.key_prefix}:*, {out / 'pool'}")
        return
    # the tokens and F-codes of a throwaway sale, and 7.5 million booking lines
    shutil.rmtree(out / "pool", ignore_errors=True)
    if env.own_prefix:
        deleted = delete_keys(env.redis_url, env.key_prefix)
        say(f"deleted {deleted:,} Redis keys of prefix {env.key_prefix}")
    if env.own_database:
        drop_database(env.database_url)
        say(f"dropped database {env.database_name}")
