"""The rehearsal, start to end: servers, setup, the crowd, the verdict, the report.

    python -m loadtest.rehearsal --preset small --out out/rehearsal-small

Exit codes: 0 the verdict holds (every invariant, and the sale sold out as the plan expected),
1 it does not (or the rehearsal could not run), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from flashsale.outbox import receivers
from loadtest import start_gate
from loadtest.plan import Plan
from loadtest.rehearsal import cleanup, existing, identities, opening, setup
from loadtest.rehearsal.api import Api
from loadtest.rehearsal.chart import draw_chart
from loadtest.rehearsal.cpu_report import add_locust, cpu_findings, sampler_for
from loadtest.rehearsal.environment import ConfigError, Environment, resolve
from loadtest.rehearsal.events_in import PulledEvents, ReceiverThread
from loadtest.rehearsal.handoff import judge_handoff
from loadtest.rehearsal.headline import (
    Timeline,
    compare_with_locust,
    fetch_timeline,
    timeline_from_records,
)
from loadtest.rehearsal.locust_run import STARTUP_S, run_locust
from loadtest.rehearsal.options import (
    Sizes,
    opening_shoppers_per_user,
    parse_args,
    payment_shares,
    sizes,
)
from loadtest.rehearsal.processes import (
    free_port,
    serve_command,
    start,
    stop,
    wait_http,
)
from loadtest.rehearsal.records_in import Records, read_records
from loadtest.rehearsal.report import build_report
from loadtest.rehearsal.report_text import render
from loadtest.rehearsal.stores import delete_keys, drop_database
from loadtest.rehearsal.verdict import PG_WAIT_S, expect_sellout, judge


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
            say(f"started `{' '.join(cmd[1:])}` ({self.processes} process(es)); waiting for it "
                "to answer /healthz")  # fmt: skip
        proc = self.proc
        alive = (lambda: proc.poll() is None) if proc is not None else (lambda: True)
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
    args: argparse.Namespace,
    env: Environment,
    api: Api,
    out: Path,
    n: Sizes,
    known: existing.ExistingSale | None = None,
) -> tuple[setup.SaleSetup, Plan, float]:
    """Mint the crowd's tokens, create the sale, import the bookings, issue the F-codes (for
    the operator's sale, ``known``: mint tokens for its booked shoppers and code holders)."""
    rng = random.Random(args.seed)
    lottery_seed = f"rehearsal-{rng.getrandbits(64):016x}"
    pool_dir = out / "pool"
    if known is not None:
        sale, lead_s = _prepare_existing(env, known, pool_dir, n, rng), STARTUP_S + args.ramp
        return sale, _plan(args, api, out, n, sale, lead_s), lead_s
    started = time.perf_counter()
    buyers, pollers, bots = identities.choose_bookers(
        args.admission, args.bookers, n, rng, lottery_seed
    )
    minted = identities.write_crowd_pools(
        pool_dir, env.token_secret, buyers, pollers, n.walk_ins, bots
    )
    mint_s = time.perf_counter() - started
    lead_s = STARTUP_S + args.ramp
    setup_s = setup.setup_seconds(args, n, lead_s) + (args.start_in or 0.0)
    if setup.opens_after_setup(args):  # moved after the setup or the start (opening.py)
        setup_s += opening.PLACEHOLDER_S
    sale = setup.create_sale(api, args, n, setup_s, lottery_seed)
    sale.timings["mint_tokens_s"] = round(mint_s, 2)
    say(
        f"sale {sale.sale_id} created, "
        + ("to open a few seconds after the crowd starts (Locust's Start button)"
           if waits_for_start(args) else "to open once the setup is done (its opening window "
           "must find the crowd)" if setup.opens_after_setup(args)
           else f"opening in {sale.opens_at - time.time():.0f} s")
        + f"; {minted:,} tokens minted in {mint_s:.1f} s"
    )  # fmt: skip
    log = out / "setup.log"
    say(f"importing {args.bookers:,} bookings (flashsale bookings import, about "
        f"{args.bookers / setup.IMPORT_RATE_ARRIVAL:.0f} s or more)")  # fmt: skip
    setup.import_bookings(sale, args.bookers, pool_dir, env.env, log)
    say(f"{args.bookers:,} bookings imported in {sale.timings['import_bookings_s']:.1f} s")
    setup.issue_fcodes(sale, n.codes, pool_dir, env.env, log)
    identities.write_fcode_pool(pool_dir, env.token_secret, sale.fcodes)
    if setup.opens_after_setup(args) and not waits_for_start(args):
        # a second more than the crowd's lead: for writing the plan, before the crowd gathers
        sale.opens_at = opening.move_opening(api, args, n, sale.sale_id, lottery_seed, lead_s + 1.0)
        say(f"the sale's opening moved to {sale.opens_at - time.time():.1f} s from now")
    return sale, _plan(args, api, out, n, sale, lead_s), lead_s


def waits_for_start(args: argparse.Namespace) -> bool:
    """With --web, a sale created here opens when the crowd starts (the Start button)."""
    return bool(args.web and not args.sale_id)


def _prepare_existing(
    env: Environment, known: existing.ExistingSale, pool_dir: Path, n: Sizes, rng: random.Random
) -> setup.SaleSetup:
    started = time.perf_counter()
    minted = existing.write_existing_pools(
        pool_dir, env.token_secret, env.database_url, known, n, rng
    )
    mint_s = time.perf_counter() - started
    say(
        f"sale {known.sale_id} (the operator's, {known.sale['status']}, opening "
        f"{known.sale['starts_at']}): {known.bookings:,} bookings, {len(known.fcodes):,} "
        f"F-codes from --fcodes; {minted:,} tokens minted in {mint_s:.1f} s"
    )
    for limit in known.cannot:
        say(f"with --sale-id, not rehearsed: {limit}")
    return setup.SaleSetup(
        sale_id=known.sale_id,
        opens_at=known.opens_at,
        lottery_seed=known.lottery_seed or "",
        timings={"mint_tokens_s": round(mint_s, 2)},
        fcodes=known.fcodes,
        campaign=known.campaign or setup.CAMPAIGN,
        created_here=False,
    )


def _plan(
    args: argparse.Namespace, api: Api, out: Path, n: Sizes, sale: setup.SaleSetup, lead_s: float
) -> Plan:
    pool_dir = out / "pool"
    return Plan(
        base_url=api.base,
        sale_id=sale.sale_id,
        stock=args.stock,
        per_user_limit=args.per_user_limit,
        admission=args.admission,
        opens_at=sale.opens_at,
        campaign=sale.campaign,
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
        payment_seed=args.seed,
        late_share=args.late_share,
        repeat_share=args.repeat_share,
        paid_again_share=args.paid_again_share,
        wrong_amount_share=args.wrong_amount_share,
        opens_on_start=waits_for_start(args),
        opening_window_ms=args.opening_window_ms,
        bot_accounts=args.bot_accounts,
        opening_shoppers_per_user=opening_shoppers_per_user(args, n),
    )


@dataclasses.dataclass
class Made:
    """What this run made in stores it shares, for the clean-up to remove (or keep)."""

    sale_id: str | None = None  # a sale created here (never the operator's, --sale-id)
    operators_sale: str | None = None  # --sale-id: kept whatever happens, and said so


def run(args: argparse.Namespace, env: Environment, out: Path, made: Made | None = None) -> int:
    made = made if made is not None else Made()
    receiver = None
    if not args.service:  # the service started here delivers its order events to this one
        receiver = ReceiverThread(env.webhook_secret)
        env.env["FLASHSALE_WEBHOOK_URLS"] = receiver.start()
    service: Service | None = None
    try:
        service = Service(args, env, out)
        api = Api(service.url, env.admin_token)
        events: ReceiverThread | PulledEvents = receiver or PulledEvents(api)
        if receiver is not None:
            # taken on now, not when the relay first polls: it gets every event of the sale
            asyncio.run(_register(env.database_url, receiver.url))
            say(f"order events go to the rehearsal's receiver at {receiver.url}")
        else:
            say("order events are read back through GET /v1/admin/events (the running "
                "service's relay cannot be pointed at this rehearsal's receiver)")  # fmt: skip
        known = None
        if args.sale_id:
            known = existing.read_existing(api, env.database_url, args.sale_id, args.fcodes)
            made.operators_sale = known.sale_id
            _take_sale_settings(args, known)
            n = existing.existing_sizes(known, args)
            expected = existing.expected_sellout(known, n)
        else:
            n = sizes(args)
            expected = (
                f"{n.buyers:,} booked shoppers for {args.stock - n.fcode_stock:,} public units, "
                f"{n.codes:,} F-codes for {n.fcode_stock:,} F-code units"
            )
        sale, plan, lead_s = prepare(args, env, api, out, n, known)
        if sale.created_here:
            made.sale_id = sale.sale_id
        if expected is None:
            say("the crowd is not expected to sell this sale out (see what is not rehearsed)")
        plan_path = out / "plan.json"
        plan.save(plan_path)
        if not plan.opens_on_start:  # (with --web, the operator's sale too: then the button)
            _wait_for_the_crowd(sale.opens_at - lead_s, sale.created_here)
        gate = _web_gate(args, api, n, sale, plan) if args.web else None
        cpu, unmeasured = sampler_for(
            service.proc.pid if service.proc else None, service.url, env.redis_url,
            env.database_url,
        )  # fmt: skip
        for line in unmeasured:
            say(line)
        if not args.web:
            opens = time.strftime("%H:%M:%S", time.localtime(sale.opens_at))
            say(f"the crowd: {args.users:,} users; the sale opens at {opens}; the crowd stays "
                f"until {args.drain:g} s after the sell-out, {args.max:g} s at most")  # fmt: skip
        load_before = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
        cpu.start()
        try:
            locust = run_locust(
                out, service.url, plan_path, env.env, workers=args.locust_workers, web=args.web,
                web_port=args.web_port, timeout_s=lead_s + args.max + args.drain + 60,
                on_start=lambda pid, role: add_locust(cpu, pid, role), gate=gate, say=say,
            )  # fmt: skip
        finally:
            cpu.stop()
        if gate is not None and (opens_at := start_gate.opening(plan.record_dir)) is not None:
            plan = dataclasses.replace(plan, opens_at=opens_at)
            sale.opens_at = opens_at
        records = read_records(out / "records")
        say(f"the verdict: waiting up to {PG_WAIT_S:.0f} s for PostgreSQL to hold every order")
        verdict = asyncio.run(judge(api, env.database_url, plan, records))
        say(
            f"the crowd has gone; {len(records.late):,} late payment(s) follow, and the sale "
            f"comes to rest as its last reservations (of {args.reservation_ttl} s) pass"
        )
        handoff = asyncio.run(
            judge_handoff(
                api, env.database_url, env.payment_secret, plan, records, verdict, events,
                reservation_ttl_s=args.reservation_ttl, events_wait_s=args.events_wait,
            )
        )  # fmt: skip
        verdict.violations += handoff.violations
        extra = _extra(args, env, n, sale, service, locust.exit_code) | handoff.report()
        extra["settings"] |= {"expected_sellout": expected,
                              "not_rehearsed": known.cannot if known else []}  # fmt: skip
        timeline = _timeline(env.database_url, plan, records)
        report = build_report(plan, records, verdict, extra, timeline=timeline)
        expect_sellout(verdict, expected, report["timing"])
        report["failed_expectations"] = verdict.failed_expectations
        report |= cpu_findings(cpu, report, out)
        report["locust"] = compare_with_locust(out, report)
        report["load_average_before"] = load_before
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        cpu.save(out / "records" / "cpu.jsonl")
        draw_chart(out / "chart.png", records, report["timing"]["opened_at"], report,
                   timeline or timeline_from_records(records, plan.stock), cpu)  # fmt: skip
        print(render(report))
        print(f"report: {out / 'report.json'}, chart: {out / 'chart.png'}, "
              f"Locust's own: {locust.html}, logs: {out}")  # fmt: skip
        return 1 if verdict.failed else 0
    finally:
        if service is not None:
            service.stop()
        if receiver is not None:
            receiver.stop()


def _take_sale_settings(args: argparse.Namespace, known: existing.ExistingSale) -> None:
    """The operator's sale decides what the options would have: its size, limit, admission."""
    args.stock = int(known.sale["stock"])
    args.bookers = known.bookings
    args.per_user_limit = int(known.sale["per_user_limit"])
    args.admission = known.admission
    args.reservation_ttl = int(known.sale.get("reservation_ttl_s") or args.reservation_ttl)
    args.opening_window_ms = int(known.sale.get("opening_window_ms") or 0)
    if not known.booking_required:
        args.walk_in_share = 0.0  # nobody is refused for not booking: no walk-ins to judge


def _wait_for_the_crowd(gather_at: float, created_here: bool) -> None:
    wait_s = gather_at - time.time()
    if wait_s > 0:
        opens = time.strftime("%H:%M:%S", time.localtime(gather_at))
        if created_here:
            say(f"setup done; the crowd gathers in {wait_s:.1f} s (at {opens}), before the opening")
        else:
            say(f"waiting {wait_s:.1f} s for the sale's opening: the crowd gathers at {opens}")
        time.sleep(wait_s)
    elif created_here:
        say(f"setup overran the planned opening by {-wait_s:.1f} s; the crowd goes now")
    else:
        say("the sale is open already: the crowd goes now")


def _web_gate(
    args: argparse.Namespace,
    api: Api,
    n: Sizes,
    sale: setup.SaleSetup,
    plan: Plan,
) -> Callable[[Callable[[], bool]], None]:
    """With --web: wait for the Start button (or --start-in), then open a sale made here a
    few seconds later; the operator's sale keeps its opening."""

    def gate(alive: Callable[[], bool]) -> None:
        opening.wait_for_start(
            Path(plan.record_dir), web_url=f"http://127.0.0.1:{args.web_port}",
            start_in=args.start_in, users=args.users, spawn_rate=args.users / max(args.ramp, 0.1),
            alive=alive, say=say,
        )  # fmt: skip
        if plan.opens_on_start:
            lead = args.ramp + opening.GATHER_S
            opens_at = opening.open_now(
                api, args, n, sale.sale_id, sale.lottery_seed, Path(plan.record_dir), lead
            )
            at = time.strftime("%H:%M:%S", time.localtime(opens_at))
            say(f"the crowd started: {args.users:,} users; the sale opens at {at}, in "
                f"{opens_at - time.time():.1f} s")  # fmt: skip
        else:
            at = time.strftime("%H:%M:%S", time.localtime(sale.opens_at))
            when = "opens" if sale.opens_at > time.time() else "opened"
            say(f"the crowd started: {args.users:,} users; the sale {when} at {at}")

    return gate


def _timeline(database_url: str, plan: Plan, records: Records) -> Timeline | None:
    """The sale's units over time from PostgreSQL's orders; None (the crowd's 201s stand in,
    and the report says so) when they cannot be read."""
    try:
        return asyncio.run(fetch_timeline(database_url, plan.sale_id, plan.stock))
    except (OSError, asyncpg.PostgresError) as exc:
        say(f"PostgreSQL's order times could not be read ({exc}); the crowd's 201s stand in")
        return None


async def _register(database_url: str, url: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await receivers.register(conn, url)
    finally:
        await conn.close()


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
            "bot_accounts": n.bot_accounts,
            "opening_window_ms": args.opening_window_ms,
            "opening_shoppers_per_user": opening_shoppers_per_user(args, n),
            "fcode_release_after_s": args.fcode_release_after,
            "admission_window_s": args.admission_window,
            "ramp_s": args.ramp,
            "drain_s": args.drain,
            "max_s": args.max,
            "pay_share": args.pay_share,
            "checkout_s": args.checkout,
            "double_click_share": args.double_click_share,
            "walk_in_share": args.walk_in_share,
            "reservation_ttl_s": args.reservation_ttl,
            "payment_shares": payment_shares(args).to_json(),
            "no_shows": n.no_shows,
            "locust_processes": max(1, args.locust_workers),
            "service_url": service.url,
            "service_started_here": service.proc is not None,
            "service_processes": service.processes or "?",
            "key_prefix": env.key_prefix,
            "database": env.database_name,
            "opens_at": sale.opens_at,
            "sale_created_here": sale.created_here,
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
    what = (
        f"sale {args.sale_id} of {args.service}"
        if args.sale_id
        else f"preset {args.preset}: stock {args.stock:,}, {args.bookers:,} booked shoppers, "
        f"admission {args.admission}"
    )
    say(
        f"{what}; Redis {env.redis_url} prefix {env.key_prefix}, "
        f"database {env.database_name}; output {out}"
    )
    made = Made()
    try:
        return run(args, env, out, made)
    except Exception as exc:  # a rehearsal that could not run is a failed one, said plainly
        print(f"launch-rehearsal: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        _clean_up(args, env, out, made)


def _clean_up(args: argparse.Namespace, env: Environment, out: Path, made: Made) -> None:
    try:
        _remove_what_we_made(args, env, out, made)
    except Exception as exc:  # the verdict stands; say what was left behind
        print(f"launch-rehearsal: clean-up failed: {exc!r}", file=sys.stderr)


def _remove_what_we_made(args: argparse.Namespace, env: Environment, out: Path, made: Made) -> None:
    shared = not (env.own_prefix and env.own_database)  # stores the run did not make
    if made.operators_sale:
        sale_id = made.operators_sale
        rows = asyncio.run(cleanup.count_sale_rows(env.database_url, sale_id))
        keys = cleanup.count_sale_keys(env.redis_url, env.key_prefix, sale_id)
        say(f"sale {sale_id} is the operator's: kept, with {cleanup.describe(rows, keys)} (the "
            "crowd's orders, payments and events among them)")  # fmt: skip
    if args.keep:
        kept = [f"{out / 'pool'} (the crowd's tokens and F-codes)"]
        if env.own_database:
            kept.append(f"database {env.database_name}")
        if env.own_prefix:
            kept.append(f"Redis keys {env.key_prefix}:*")
        say("kept (--keep): " + ", ".join(kept))
        if made.sale_id and shared:
            say(cleanup.kept_sale(env.redis_url, env.key_prefix, env.database_url, made.sale_id))
        return
    # the tokens and F-codes of a throwaway sale, and 7.5 million booking lines
    shutil.rmtree(out / "pool", ignore_errors=True)
    if made.sale_id and shared:  # the sale made here, in stores it shares with others
        say(cleanup.remove_sale(env.redis_url, env.key_prefix, env.database_url, made.sale_id))
    if env.own_prefix:
        deleted = delete_keys(env.redis_url, env.key_prefix)
        say(f"deleted {deleted:,} Redis keys of prefix {env.key_prefix}")
    if env.own_database:
        drop_database(env.database_url)
        say(f"dropped database {env.database_name}")
