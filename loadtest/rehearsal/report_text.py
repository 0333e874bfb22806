"""The report as the rehearsal prints it."""

from __future__ import annotations

from typing import Any

from loadtest.records import BUY


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _n(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}"


def render(r: dict[str, Any]) -> str:
    s, t, pg = r["settings"], r["timing"], r["postgres"]
    setup = r["setup"]
    lines = [
        f"== launch rehearsal: sale {r['sale_id']} ({s['admission']}), stock {r['stock']:,} "
        f"({s['fcode_stock']:,} for F-codes), {s['bookers']:,} booked shoppers",
        f"setup: {s['bookers']:,} bookings imported in {setup.get('import_bookings_s', 0):.1f} s, "
        f"{s['codes']:,} F-codes issued in {setup.get('issue_fcodes_s', 0):.1f} s, "
        f"{s['tokens']:,} tokens minted in {setup.get('mint_tokens_s', 0):.1f} s",
        f"crowd: {s['users']:,} Locust users in {s['locust_processes']} process(es), "
        f"ramp {s['ramp_s']:g} s; service {s['service_url']} "
        + (
            f"({s['service_processes']} process(es), started here)"
            if s["service_started_here"]
            else "(already running)"
        ),
    ]
    if t["crowd_late_s"] > 0:
        lines.append(
            f"NOTE: the crowd arrived {t['crowd_late_s']:.1f} s after the planned "
            "opening (setup overran it); times count from its arrival"
        )
    if t["sold_out"]:
        lines.append(f"time to sell out: {t['sellout_s']:.2f} s after the opening second")
    else:
        lines.append(
            f"NOT sold out: {r['available']:,} public and {r['fcode_available']:,} "
            "F-code units left when the crowd stopped"
        )
    lines += [
        f"units: {r['sold']:,} of {r['stock']:,} sold ({r['paid']:,} paid, "
        f"{r['reserved_unpaid']:,} reserved and not paid)",
        f"successful buys/s: {_n(r['buys_per_s'])} ({t['buys']:,} answered 201)",
        f"requests/s: {_n(r['requests_per_s'])} over the whole run, "
        f"{_n(t['requests_per_s_during_sale'])} from the opening to the last unit; "
        f"{r['requests']:,} requests, {r['failures']:,} failed",
        "latency per endpoint (ms, whole run):",
        f"  {'endpoint':<34}{'requests':>10}{'failed':>8}{'req/s':>8}"
        f"{'p50':>7}{'p95':>7}{'p99':>7}{'max':>8}",
    ]
    for name, e in r["endpoints"].items():
        lines.append(
            f"  {name:<34}{e['requests']:>10,}{e['failures']:>8,}{e['requests_per_s']:>8,.0f}"
            f"{_ms(e['p50_ms']):>7}{_ms(e['p95_ms']):>7}{_ms(e['p99_ms']):>7}"
            f"{_ms(e['max_ms']):>8}"
        )
    for name, e in r["endpoints_during_sale"].items():
        if name == BUY:
            lines.append(
                f"  buys from the opening to the last unit: {e['requests']:,} at "
                f"{e['requests_per_s']:,.0f}/s, p50 {_ms(e['p50_ms'])}, p95 {_ms(e['p95_ms'])}, "
                f"p99 {_ms(e['p99_ms'])} ms"
            )
    if r["errors"]:
        lines.append("errors by kind:")
        lines += [f"  {n:>8,}  {kind}" for kind, n in r["errors"].items()]
    else:
        lines.append("errors: none (no 5xx, no malformed bodies, no connection errors)")
    lines.append("answers:")
    for endpoint, counts in r["answers"].items():
        shown = ", ".join(f"{k} {v:,}" for k, v in counts.items())
        lines.append(f"  {endpoint}: {shown}")
    b = r["bots"]
    if b["users"]:
        refused = ", ".join(f"{k} {v:,}" for k, v in b["refused_by_answer"].items()) or "none"
        lines.append(
            f"bots: {b['users']} of the users ({b['share_of_users']:.0%}) got {b['units']:,} "
            f"units = {b['share_of_units']:.1%} of the stock; {b['requests']:,} requests, "
            f"{b['refused']:,} refused ({refused})"
        )
    caught = pg["pg_caught_up_after_sellout_s"]
    lines.append(
        "PostgreSQL: "
        + (
            f"held every order {caught:.1f} s after the sell-out"
            if caught is not None
            else "did not catch up (see violations)"
            if r["violations"]
            else "-"
        )
        + f"; the writer lagged by at most {pg['pg_max_lag_orders']:,} orders"
    )
    if pg["admin_stats_ms_max"] is not None:
        lines.append(
            f"admin stats endpoint during the run: median {pg['admin_stats_ms_median']:,.0f} ms, "
            f"max {pg['admin_stats_ms_max']:,.0f} ms ({pg['admin_stats_samples']} answers, "
            f"{pg['admin_stats_errors']} failed or timed out after 10 s)"
        )
    if pg["public_sale_errors"]:
        lines.append(f"the watcher's GET of the sale failed {pg['public_sale_errors']} times")
    for window, cores in r["cpu_cores"].items():
        shown = ", ".join(f"{k} {v:.2f}" for k, v in cores.items()) or "-"
        lines.append(f"CPU {window.replace('_', ' ')}, in cores of {r['machine_cores']}: {shown}")
    if r.get("generator_bound"):
        used = r["cpu_cores"]["during_sale"].get("locust", 0)
        lines.append(
            f"WARNING: Locust used {used:.2f} cores in {s['locust_processes']} process(es) during "
            "the sale (one event loop each, sharing the cores with the service): latency and "
            "rates may be GENERATOR-BOUND (try --locust-workers N, or fewer --users)"
        )
    load = " ".join(f"{x:.2f}" for x in r["load_average_before"])
    lines.append(f"load average before the crowd: {load} (other work here skews the figures)")
    if r.get("service_log_problems"):
        lines.append(f"service log: {r['service_log_problems']} warning/error line(s)")
    for v in r["violations"]:
        lines.append(f"VIOLATION: {v}")
    lines.append("verdict: " + ("all invariants hold" if not r["violations"] else "FAILED"))
    return "\n".join(lines)
