"""The rehearsal's report, from crafted inputs: a headline over the sale window, one source for
every figure of the chart, one bottleneck call with its evidence, a sale expected to sell out
that did not failing the verdict, Locust's figures explained, the units won per account by
bots and humans; and the presets' opening window."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest import start_gate
from loadtest.plan import Plan
from loadtest.records import BUY, ENDPOINTS, SALE
from loadtest.rehearsal import existing, opening
from loadtest.rehearsal.bottleneck import call_bottleneck, locust_cpu_warnings, warned_within
from loadtest.rehearsal.chart import draw_chart, title, units_left_steps
from loadtest.rehearsal.headline import compare_with_locust, timeline_from_orders
from loadtest.rehearsal.options import (
    OPENING_ADMISSION_WINDOW_S,
    opening_shoppers_per_user,
    parse_args,
    sizes,
)
from loadtest.rehearsal.processes import CpuSampler, Sample, find_service, is_local_host
from loadtest.rehearsal.records_in import Records
from loadtest.rehearsal.report import build_report, per_account
from loadtest.rehearsal.report_text import render
from loadtest.rehearsal.setup import opens_after_setup, sale_spec
from loadtest.rehearsal.verdict import Verdict, expect_sellout

REPO = Path(__file__).resolve().parents[1]
OPENS = 1_800_000_000.0  # the opening second of the crafted sales
PNG = b"\x89PNG\r\n\x1a\n"


def _plan(tmp_path: Path, stock: int = 10) -> Plan:
    return Plan(
        base_url="http://127.0.0.1:1", sale_id="s", stock=stock, per_user_limit=1,
        admission="arrival", opens_at=OPENS, campaign="c", pool_dir=str(tmp_path / "pool"),
        record_dir=str(tmp_path / "records"), locust_processes=1, users=10, fcode_users=1,
        bot_users=0, ramp_s=1.0, drain_s=1.0, max_s=30.0, pay_share=0.9, checkout_s=1.0,
        double_click_share=0.0, walk_in_share=0.0, sold_out_retries=2, poll_interval_s=1.0,
    )  # fmt: skip


def _order(created: float, status: str = "reserved", updated: float | None = None,
           expires: float | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "created_at": datetime.fromtimestamp(created, UTC),
        "updated_at": datetime.fromtimestamp(updated if updated is not None else created, UTC),
        "expires_at": datetime.fromtimestamp(expires if expires is not None else created + 30, UTC),
        "status": status,
        "quantity": 1,
    }


def _records(requests: list[tuple[float, float, str]], reserved: list[float]) -> Records:
    """``requests``: (start epoch s, latency ms, endpoint); ``reserved``: 201 times."""
    r = Records()
    r.start = np.array([t for t, _, _ in requests], dtype=np.float64)
    r.ms = np.array([ms for _, ms, _ in requests], dtype=np.float64)
    r.endpoint = np.array([ENDPOINTS.index(e) for _, _, e in requests], dtype=np.uint8)
    r.failed = np.zeros(len(requests), dtype=np.uint8)
    r.reserved = {f"s.{i}": {"t": t, "user": f"u{i}", "lane": "public"}
                  for i, t in enumerate(reserved)}  # fmt: skip
    r.answers = Counter({(BUY, "booked", "201"): len(reserved)})
    return r


def _verdict(stock: int, sold: int) -> Verdict:
    units = {"reserved": sold, "paid": 0, "available": stock - sold, "fcode_available": 0,
             "expired": 0, "cancelled": 0}  # fmt: skip
    return Verdict(units=units)


def _extra() -> dict[str, Any]:
    settings = {"preset": "small", "admission": "arrival", "bookers": 100, "stock": 10,
                "fcode_stock": 0, "codes": 0, "tokens": 100, "users": 10, "ramp_s": 1.0,
                "locust_processes": 1, "service_url": "http://x", "service_started_here": True,
                "service_processes": 2}  # fmt: skip
    return {"settings": settings, "setup": {}, "machine_cores": 2, "load_average_before": [0, 0, 0]}


def _sale_then_cheap_answers() -> tuple[Records, list[dict[str, Any]]]:
    """A sale of 10 units over 2 s with slow buys (300 to 500 ms), then 2,000 quick sold_out
    answers (5 ms) over 8 s: the whole run's p99 is the cheap answers'."""
    requests = [(OPENS + 0.2 * i, 300.0 + 20 * i, BUY) for i in range(11)]
    requests += [(OPENS + 2.5 + 0.004 * i, 5.0, BUY) for i in range(2000)]
    requests += [(OPENS + 3.0, 40.0, SALE)]
    # the units went at 0.1, 0.3, ... 1.9 s by the service's clock; the crowd read the 201s
    # up to half a second later (on a busy machine, seconds)
    orders = [_order(OPENS + 0.1 + 0.2 * i) for i in range(10)]
    return _records(requests, [OPENS + 0.6 + 0.2 * i for i in range(10)]), orders


def test_the_headline_is_the_sale_window_not_the_whole_run(tmp_path: Path) -> None:
    records, orders = _sale_then_cheap_answers()
    timeline = timeline_from_orders(orders, 10)
    report = build_report(_plan(tmp_path), records, _verdict(10, 10), _extra(), timeline=timeline)
    t, h = report["timing"], report["headline"]
    assert t["sold_out"]
    assert t["sellout_s"] == pytest.approx(1.9)
    assert t["window_s"] == pytest.approx(1.9)
    assert report["buys_per_s"] == pytest.approx(10 / 1.9, abs=0.1)
    window_buys = [300.0 + 20 * i for i in range(10)]  # started by the last unit (1.9 s)
    assert (
        report["p99_ms"]
        == h["buy_p99_ms"]
        == pytest.approx(np.percentile(window_buys, 99), abs=0.1)
    )
    assert report["p99_ms"] > 400  # not the 5 ms sold_out answers after it ...
    assert h["whole_run"]["buy_p99_ms"] < report["p99_ms"]  # ... which the whole run has
    assert h["whole_run"]["requests"] == records.start.size
    assert report["requests_per_s"] == pytest.approx(10 / 1.9, abs=0.1)
    text = render(report | {"bottleneck": None})
    assert text.index("HEADLINE, the sale window") < text.index("whole run (from the crowd")
    assert "time to sell out: 1.90 s" in text


def test_the_chart_has_one_source_for_units_and_the_sold_out_line(tmp_path: Path) -> None:
    """The units left reach 0 exactly at the dashed sold-out line, and the title carries the
    headline's figures, from the same timeline."""
    records, orders = _sale_then_cheap_answers()
    timeline = timeline_from_orders(orders, 10)
    report = build_report(_plan(tmp_path), records, _verdict(10, 10), _extra(), timeline=timeline)
    t, left = units_left_steps(timeline, OPENS)
    sold_out = timeline.sold_out_at
    assert sold_out is not None
    at = sold_out - OPENS
    assert left[t <= at][-1] == 0  # at the line: none left ...
    assert left[t < at][-1] == 1  # ... and one just before it, never after it
    assert np.all(left[t > at] == 0)
    assert timeline.left_at(sold_out - 1e-6) == 1
    assert timeline.left_at(sold_out) == 0
    assert f"sell-out {report['sellout_s']:.2f} s" in title(report)
    assert f"buy p99 {report['headline']['buy_p99_ms']} ms (the sale window)" in title(report)
    draw_chart(tmp_path / "chart.png", records, OPENS, report | {"bottleneck": None}, timeline)
    assert (tmp_path / "chart.png").read_bytes()[:8] == PNG


def test_units_that_come_back_and_late_payments_follow_the_orders() -> None:
    orders = [
        _order(OPENS + 1, "expired", updated=OPENS + 5),  # back at 5 s
        _order(OPENS + 2, "paid", updated=OPENS + 9, expires=OPENS + 6),  # paid late at 9 s
        _order(OPENS + 3, "cancelled", updated=OPENS + 4),
        _order(OPENS + 7),
    ]
    tl = timeline_from_orders(orders, 3)
    held = [tl.held_at(OPENS + s) for s in (0.5, 1, 2, 3, 4, 5, 6, 7, 9)]
    assert held == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert tl.sold_out_at == OPENS + 3  # every unit held for a moment
    assert tl.last_unit_at() == OPENS + 3


def test_a_sale_that_did_not_sell_out_has_no_sellout_and_fails_its_expectation(
    tmp_path: Path,
) -> None:
    """12 of 25 F-code holders: 8 F-code units unsold, and the verdict still said all held."""
    orders = [_order(OPENS + 0.1 * i) for i in range(92)]
    requests = [(OPENS + 0.1 * i, 50.0, BUY) for i in range(300)]
    records = _records(requests, [OPENS + 0.1 * i for i in range(92)])
    timeline = timeline_from_orders(orders, 100)
    verdict = _verdict(100, 92)
    report = build_report(_plan(tmp_path, 100), records, verdict, _extra(), timeline=timeline)
    t = report["timing"]
    assert not t["sold_out"]
    assert t["sellout_s"] is None
    assert t["units_left_when_crowd_stopped"] == 8
    assert t["last_unit_at"] == pytest.approx(OPENS + 9.1)  # the window ends at the last unit
    expect_sellout(verdict, "25 F-codes for 20 F-code units", t)
    assert verdict.failed
    assert not verdict.violations
    assert "did not sell out: 8 unit(s) left" in verdict.failed_expectations[0]
    report["failed_expectations"] = verdict.failed_expectations
    text = render(report | {"bottleneck": None})
    assert "EXPECTATION NOT MET: the sale did not sell out" in text
    assert "verdict: FAILED: 1 expectation(s) not met" in text
    assert "all invariants hold" not in text
    unexpected = _verdict(100, 92)
    expect_sellout(unexpected, None, t)  # a sale not expected to sell out: nothing failed
    assert not unexpected.failed


def _cpu(**cores: float) -> dict[str, Any]:
    """A window's CPU: component=cores, with one process each at those cores."""
    machine = cores.pop("machine", None)
    return {
        "seconds": 2.0,
        "samples": 20,
        "cores": cores,
        "busiest_process": {c: {"cores": v, "pid": 1, "what": ""} for c, v in cores.items()},
        "processes": {c: 1 for c in cores},
        "machine_busy_cores": machine,
    }


@pytest.mark.parametrize(
    ("cpu", "unknown", "warned", "component"),
    [
        (_cpu(**{"load generator": 0.95, "service": 0.5, "machine": 1.6}), {}, False,
         "load generator"),
        # Locust's own warning and our figure can no longer disagree: either makes the call
        (_cpu(**{"load generator": 0.7, "service": 0.5, "machine": 1.4}), {}, True,
         "load generator"),
        (_cpu(**{"load generator": 0.4, "service": 0.97, "machine": 1.5}), {}, False, "service"),
        (_cpu(**{"load generator": 0.4, "service": 0.5, "redis": 0.93, "machine": 1.9}), {},
         False, "redis"),
        (_cpu(**{"load generator": 0.6, "service": 0.7, "postgres": 0.5, "machine": 1.95}), {},
         False, "unknown"),
        (_cpu(**{"load generator": 0.3, "machine": 0.5}), {"service": "it runs on db-1"}, False,
         "unknown"),
        (_cpu(**{"load generator": 0.3, "service": 0.4, "machine": 0.9}), {}, False, "none"),
        (_cpu(**{"load generator": 0.3, "service": 0.4, "machine": 0.9}) | {"samples": 2}, {},
         False, "unknown"),
    ],
)  # fmt: skip
def test_one_bottleneck_call_with_its_evidence(
    cpu: dict[str, Any], unknown: dict[str, str], warned: bool, component: str
) -> None:
    call = call_bottleneck(cpu, machine_cores=2, unknown=unknown, locust_warned=warned,
                           window="the sale")  # fmt: skip
    assert call["component"] == component, call
    assert call["evidence"][0].startswith("window: the sale, 2.00 s")
    if unknown:
        assert any("not measured (it runs on db-1)" in e for e in call["evidence"])


def test_locust_warnings_count_within_the_window_only() -> None:
    log = (
        "[2026-11-30 23:04:55,123] vm/INFO/locust.main: Starting Locust 2.47.0\n"
        "[2026-11-30 23:04:57,500] vm/WARNING/root: CPU usage above 90%! This may constrain\n"
    )
    (at,) = locust_cpu_warnings(log)
    assert at == datetime(2026, 11, 30, 23, 4, 57, 500000).timestamp()
    assert warned_within([at], at - 1, at + 1)
    assert warned_within([at], at + 2, at + 10)  # Locust looks back over its last interval
    assert not warned_within([at], at + 4, at + 10)


def _sampler(
    samples: list[tuple[float, dict[int, float], float]], created: dict[int, float]
) -> CpuSampler:
    cpu = CpuSampler()
    cpu.finders["service"] = [lambda: []]
    cpu._procs["service"] = {}
    cpu.samples = [Sample(t, {"service": per_pid}, busy, 0.0) for t, per_pid, busy in samples]
    cpu.created = created
    return cpu


def test_cpu_over_a_short_window_comes_from_samples_inside_it() -> None:
    """A sale of 0.6 s, sampled every 0.1 s: pid 1 busy at a full core throughout, pid 2
    started within the window (its CPU before its first sample counts), the machine at 1.5."""
    samples = []
    for i in range(20):
        per_pid = {1: 10.0 + 0.1 * i} | ({2: 0.025 + 0.05 * (i - 3)} if i >= 3 else {})
        samples.append((100.0 + 0.1 * i, per_pid, 50.0 + 0.15 * i))
    cpu = _sampler(samples, {1: 0.0, 2: 100.25})
    w = cpu.window(100.3, 100.9)
    assert w.samples == 7
    assert w.busiest["service"] == (pytest.approx(1.0), 1)
    assert w.cores["service"] == pytest.approx(1.0 + 0.5)
    assert w.machine == pytest.approx(1.5)
    edges = np.array([100.0, 100.5, 101.0, 101.5, 102.0, 102.5])
    series = cpu.series(edges)
    assert series["service"][0] == pytest.approx(1.0 + 0.5 * 0.25 / 0.5, abs=0.01)
    assert np.isnan(series["service"][-1])  # nothing sampled then


SERVE = """
import socket, sys, time  # stands in for `flashsale serve`
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(60)
"""


def test_a_running_service_is_found_by_its_port() -> None:
    """--service: the processes listening on its port and their tree; a proxy in front of it
    or a service elsewhere is not measured, and says why."""
    with subprocess.Popen([sys.executable, "-c", SERVE], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
            roots, why, listeners = find_service(f"http://127.0.0.1:{port}")
            assert roots is not None, why
            assert listeners == [proc.pid]
            assert roots() == [proc.pid]
        finally:
            proc.kill()
    with socket.socket() as s:  # a listener that is not flashsale: a proxy?
        s.bind(("127.0.0.1", 0))
        s.listen()
        roots, why, _ = find_service(f"http://localhost:{s.getsockname()[1]}")
        assert roots is None
        assert "not flashsale" in why
    roots, why, _ = find_service("http://flashsale.invalid:8080")
    assert roots is None
    assert "not on this machine" in why
    assert is_local_host("127.0.0.1")


def test_locust_figures_are_explained(tmp_path: Path) -> None:
    records, orders = _sale_then_cheap_answers()
    report = build_report(_plan(tmp_path), records, _verdict(10, 10), _extra(),
                          timeline=timeline_from_orders(orders, 10))  # fmt: skip
    n = int(records.start.size)
    (tmp_path / "locust_stats.csv").write_text(
        "Type,Name,Request Count,Failure Count,Requests/s\n"
        f"POST,{BUY},{n - 11},0,{(n - 11) / 14.0}\n"
        f",Aggregated,{n - 10},0,{(n - 10) / 14.0}\n"
    )
    (tmp_path / "locust_stats_history.csv").write_text(
        f"Timestamp,User Count,Type,Name\n{int(OPENS - 4)},0,,Aggregated\n"
    )
    c = compare_with_locust(tmp_path, report)
    assert c is not None
    assert c["span_s"] == pytest.approx(14.0)
    assert c["started_before_opening_s"] == 4
    assert c["endpoints"][BUY]["locust_requests"] == n - 11
    assert "from the start of its test (4 s before the opening second" in c["why_they_differ"][0]
    assert "lacks the last 10 request(s)" in c["why_they_differ"][1]


def test_the_options_of_an_existing_sale_and_of_the_web() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--sale-id", "s"])  # no --service
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--fcodes", "f.csv"])  # codes of a sale made here?
    args = parse_args(["--out", "x", "--service", "http://h:1", "--sale-id", "s", "--fcodes",
                       "f.csv", "--web", "--start-in", "20"])  # fmt: skip
    assert (args.sale_id, args.fcodes, args.web, args.start_in) == ("s", "f.csv", True, 20.0)


def test_the_script_help_is_the_options_help() -> None:
    done = subprocess.run([str(REPO / "scripts" / "launch-rehearsal"), "--help"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0
    assert "set -euo" not in done.stdout
    for option in ("--locust-workers", "--sale-id", "--fcodes", "--start-in", "--keep"):
        assert option in done.stdout
    assert "bottleneck" in done.stdout
    assert "sale window" in done.stdout


def test_fcodes_of_an_issue_file(tmp_path: Path) -> None:
    path = tmp_path / "codes.csv"
    path.write_text(
        "\ufeffcode,code_ref,user,campaign,sale_id\n"
        "AAAA,r1,,vip,s1\nBBBB,r2,alice,vip,s1\nCCCC,r3,,press,s1\nDDDD,r4,,vip,s2\n"
    )
    codes, campaign, notes = existing.read_fcodes(path, "s1")
    assert campaign == "vip"
    assert codes == [("AAAA", "fcode-fan-0"), ("BBBB", "alice")]  # a bound code: its user
    assert any("other sales" in n for n in notes)
    assert any("press" in n for n in notes)


def _existing(**sale: Any) -> existing.ExistingSale:
    base = {"sale_id": "s1", "stock": 100, "fcode_stock": 10, "status": "scheduled",
            "per_user_limit": 1, "starts_at": "2026-11-22T02:00:00Z", "booking_required": True,
            "admission": "arrival"}  # fmt: skip
    return existing.ExistingSale(sale=base | sale, bookings=1000, lottery_seed=None)


def test_what_an_existing_sale_can_be_expected_to_do() -> None:
    args = parse_args(["--out", "x", "--preset", "small", "--service", "http://h:1",
                       "--sale-id", "s1"])  # fmt: skip
    without_codes = _existing()
    n = existing.existing_sizes(without_codes, args)
    assert n.codes == 0
    assert n.fcode_stock == 10
    assert existing.expected_sellout(without_codes, n) is None  # its F-code units stay
    with_codes = _existing()
    with_codes.fcodes = [(f"C{i}", f"fan-{i}") for i in range(12)]
    n = existing.existing_sizes(with_codes, args)
    assert existing.expected_sellout(with_codes, n) is not None
    released = _existing(fcode_release_at="2026-11-22T02:01:00Z")
    assert existing.expected_sellout(released, existing.existing_sizes(released, args))
    few = _existing(stock=5000, fcode_stock=0)  # 1,000 bookings for 5,000 units
    assert existing.expected_sellout(few, existing.existing_sizes(few, args)) is None
    assert _existing().opens_at == datetime(2026, 11, 22, 2, tzinfo=UTC).timestamp()


def test_the_crowd_waits_for_its_start_and_the_sale_moves_with_it(tmp_path: Path) -> None:
    """--web: the sale opens a few seconds after the Start button, not on its own."""
    args = parse_args(["--out", "x", "--preset", "small", "--admission", "booking_order",
                       "--fcode-release-after", "30"])  # fmt: skip
    times = opening.opening_times(args, sizes(args), "s", OPENS, "seed")
    assert times["starts_at"] == datetime.fromtimestamp(OPENS, UTC).isoformat()
    assert times["booking_closes_at"] == times["starts_at"]  # a queue closes at the start
    assert times["fcode_release_at"] == datetime.fromtimestamp(OPENS + 30, UTC).isoformat()
    # a sale may be moved only before its booking opens: with --web that is at the opening
    web = parse_args(["--out", "x", "--preset", "small", "--web"])
    moved = opening.opening_times(web, sizes(web), "s", OPENS, "seed")
    assert moved["booking_opens_at"] == datetime.fromtimestamp(OPENS - 60, UTC).isoformat()
    said: list[str] = []

    def press_start() -> None:
        time.sleep(0.3)
        start_gate.announce_start(tmp_path)

    threading.Thread(target=press_start).start()
    started = opening.wait_for_start(
        tmp_path, web_url="http://127.0.0.1:9", start_in=None, users=10, spawn_rate=10,
        alive=lambda: True, say=said.append,
    )  # fmt: skip
    assert abs(started - time.time()) < 1
    assert "waits for its Start button" in said[0]
    start_gate.set_opening(tmp_path, OPENS)
    assert start_gate.wait_for_opening(tmp_path, timeout_s=1) == OPENS
    with pytest.raises(RuntimeError, match="Locust exited"):
        opening.wait_for_start(tmp_path / "nothing", web_url="http://127.0.0.1:9",
                               start_in=None, users=1, spawn_rate=1, alive=lambda: False,
                               say=said.append)  # fmt: skip


def test_the_report_json_is_json(tmp_path: Path) -> None:
    records, orders = _sale_then_cheap_answers()
    report = build_report(_plan(tmp_path), records, _verdict(10, 10), _extra(),
                          timeline=timeline_from_orders(orders, 10))  # fmt: skip
    assert json.loads(json.dumps(report))["headline"]["window"].startswith("from the opening")


def _contest(bot_accounts: int, bot_wins: int, humans: int, human_wins: int) -> Records:
    """A public lane where ``bot_accounts`` bots' accounts won ``bot_wins`` units and
    ``humans`` booked accounts ``human_wins``; a walk-in and an F-code holder besides."""
    r = Records()
    r.accounts = {"bot": {f"bot-{i}" for i in range(bot_accounts)},
                  "booked": {f"fan-{i}" for i in range(humans)}, "walk-in": {"walker"}}  # fmt: skip
    wins = [(f"bot-{i}", "bot") for i in range(bot_wins)]
    wins += [(f"fan-{i}", "public") for i in range(human_wins)] + [("holder", "fcode")]
    r.reserved = {f"s.{n}": {"t": OPENS, "user": u, "lane": lane}
                  for n, (u, lane) in enumerate(wins)}  # fmt: skip
    return r


@pytest.mark.parametrize(
    ("bots", "bot_wins", "humans", "human_wins", "share_of_accounts", "share_of_units", "ratio"),
    [
        (20, 20, 180, 80, 0.1, 0.2, 2.0),  # every bot account won, fewer than half the humans
        (20, 10, 180, 90, 0.1, 0.1, 1.0),  # half of each: as much per account
        (50, 25, 150, 100, 0.25, 0.2, 0.8),
        (0, 0, 10, 5, 0.0, 0.0, None),  # no bots: no ratio
    ],
)  # fmt: skip
def test_units_per_account_bots_against_humans(
    tmp_path: Path, bots: int, bot_wins: int, humans: int, human_wins: int,
    share_of_accounts: float, share_of_units: float, ratio: float | None,
) -> None:  # fmt: skip
    plan = dataclasses.replace(_plan(tmp_path, stock=1000), bot_users=2, bot_accounts=10,
                               opening_window_ms=5000)  # fmt: skip
    a = per_account(plan, _contest(bots, bot_wins, humans, human_wins))
    assert (a["bot_accounts"], a["human_accounts"], a["walk_in_accounts"]) == (bots, humans, 1)
    assert (a["bot_units"], a["human_units"]) == (bot_wins, human_wins)  # F-codes apart
    assert a["share_of_accounts"] == pytest.approx(share_of_accounts)
    assert a["share_of_units"] == pytest.approx(share_of_units)
    assert a["ratio"] == (None if ratio is None else pytest.approx(ratio))
    assert (a["opening_window_ms"], a["bot_accounts_planned"]) == (5000, 20)


def test_the_report_prints_the_ratio_with_the_window_beside_it(tmp_path: Path) -> None:
    records, orders = _sale_then_cheap_answers()
    records.accounts = {"bot": {"b1", "b2"}, "booked": {f"u{i}" for i in range(18)}}
    records.reserved["s.bot"] = {"t": OPENS + 1, "user": "b1", "lane": "bot"}
    timeline = timeline_from_orders(orders, 10)
    for window, shown in ((5000, "window 5,000 ms"), (0, "no window")):
        plan = dataclasses.replace(_plan(tmp_path), bot_users=1, opening_window_ms=window)
        report = build_report(plan, records, _verdict(10, 10), _extra(), timeline=timeline)
        a = report["bots"]["per_account"]
        # 1 of the 11 public units won by 2 of the 20 accounts
        assert a["ratio"] == pytest.approx((1 / 11) / (2 / 20), abs=1e-4)
        assert json.loads(json.dumps(report))["bots"]["per_account"] == a
        text = render(report | {"bottleneck": None})
        assert f"units per account, bots against humans ({shown}): ratio 0.91x" in text
        assert "2 bot accounts won 1, 18 booked human accounts that sent a buy won 10" in text


def test_the_presets_open_with_a_window_and_release_the_fcode_units() -> None:
    for preset, release in (("full", 60.0), ("small", 15.0)):
        args = parse_args(["--out", "x", "--preset", preset])
        assert (args.opening_window_ms, args.fcode_release_after) == (10_000, release)
        assert args.admission_window == OPENING_ADMISSION_WINDOW_S
        assert args.bot_accounts == 20
        n = sizes(args)
        assert n.bot_accounts == n.bot_users * 20
        # the crowd of the opening outnumbers the public units, as much as a user can bring
        per_user = opening_shoppers_per_user(args, n)
        booked_users = round((args.users - n.fcode_users - n.bot_users) * 0.9)
        assert 1 <= per_user <= 4 * (10 - 0.2)
        if preset == "small":
            assert per_user * booked_users >= args.stock - n.fcode_stock
    args = parse_args(["--out", "x", "--preset", "small", "--opening-window-ms", "0",
                       "--fcode-release-after", "-1", "--bot-accounts", "3"])  # fmt: skip
    assert (args.opening_window_ms, args.fcode_release_after, args.admission_window) == (
        0, None, 5
    )  # fmt: skip
    assert opening_shoppers_per_user(args, sizes(args)) == 0
    assert sizes(args).bot_accounts == sizes(args).bot_users * 3
    queue = parse_args(["--out", "x", "--admission", "lottery"])
    assert queue.opening_window_ms == 0  # a booking queue has its order already
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--admission", "lottery", "--opening-window-ms", "2000"])
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--bot-accounts", "0"])


def test_a_sale_with_a_window_opens_once_the_setup_is_done() -> None:
    """A setup that overran its planned opening (a 7.5 million bookings import on a busy
    machine) closed the window before the crowd came: such a sale is created to open later
    and moved then, which it may be while its booking has not opened."""
    args = parse_args(["--out", "x", "--preset", "small"])
    assert opens_after_setup(args)
    opens = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    spec = sale_spec(args, sizes(args), "s", opens, "seed")
    assert spec["booking_opens_at"] == datetime(2026, 12, 2, 11, 59, tzinfo=UTC).isoformat()
    assert spec["opening_window_ms"] == 10_000
    assert spec["fcode_release_at"] == datetime(2026, 12, 2, 12, 0, 15, tzinfo=UTC).isoformat()
    assert not opens_after_setup(parse_args(["--out", "x", "--opening-window-ms", "0"]))
    operators = parse_args(["--out", "x", "--service", "http://h:1", "--sale-id", "s"])
    assert operators.opening_window_ms == 0  # the operator's sale has its own
    assert not opens_after_setup(operators)
