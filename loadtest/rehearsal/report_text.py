"""The report as the rehearsal prints it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from loadtest.records import BUY


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _n(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}"


POOL_NAMES = {"buyers": "booked shoppers", "fcode_holders": "F-code holders",
              "pollers": "late arrivals", "walk_ins": "walk-ins"}  # fmt: skip


def _table(title: str, endpoints: dict[str, Any]) -> list[str]:
    lines = [
        title,
        f"  {'endpoint':<34}{'requests':>10}{'failed':>8}{'req/s':>8}"
        f"{'p50':>7}{'p95':>7}{'p99':>7}{'max':>8}",
    ]
    for name, e in endpoints.items():
        lines.append(
            f"  {name:<34}{e['requests']:>10,}{e['failures']:>8,}{e['requests_per_s']:>8,.0f}"
            f"{_ms(e['p50_ms']):>7}{_ms(e['p95_ms']):>7}{_ms(e['p99_ms']):>7}"
            f"{_ms(e['max_ms']):>8}"
        )
    return lines


def _pools(r: dict[str, Any]) -> str | None:
    pools = r.get("crowd", {}).get("pools") or {}
    shown = []
    for name, use in pools.items():
        came_back = f", {use['reused']:,} came back" if use.get("reused") else ""
        shown.append(
            f"{POOL_NAMES.get(name, name)} {use['taken']:,} taken of {use['size']:,}{came_back}"
        )
    return ("pools (shared by every Locust process): " + "; ".join(shown)) if shown else None


def _headline(r: dict[str, Any]) -> list[str]:
    t, h = r["timing"], r["headline"]
    window = f"{t['window_s']:.2f} s" if t["window_s"] else "-"
    lines = [
        f"HEADLINE, the sale window (from the opening second to the last unit, {window}; "
        f"times by {t['clock']}):"
    ]
    if t["sold_out"]:
        lines.append(f"  time to sell out: {t['sellout_s']:.2f} s after the opening second")
    else:
        left = t.get("units_left_when_crowd_stopped")
        lines.append(
            f"  NOT sold out: {'-' if left is None else f'{left:,}'} unit(s) left when the crowd "
            f"stopped ({r['available']:,} public and {r['fcode_available']:,} F-code units "
            "left at the verdict)"
        )
    lines += [
        f"  buys/s: {_n(t['buys_per_s'])} ({t['buys']:,} of {r['stock']:,} units taken in the "
        f"window; the crowd read {t['answered_201']:,} answers 201 in all)",
        f"  requests/s: {_n(h['requests_per_s'])} (buy {_n(h['buy_requests_per_s'])})",
        f"  buy latency: p50 {_ms(h['buy_p50_ms'])}, p95 {_ms(h['buy_p95_ms'])}, "
        f"p99 {_ms(h['buy_p99_ms'])} ms (all requests p99 {_ms(h['p99_ms'])} ms)",
    ]
    b = r.get("bottleneck")
    if b:
        lines.append(f"  bottleneck: {b['component']}: {b['why']}")
        lines += [f"    {e}" for e in b["evidence"]]
    on_sale = r["available"] + r["fcode_available"]
    lines.append(
        f"units at the verdict, after the crowd: {r['sold']:,} of {r['stock']:,} held "
        f"({r['paid']:,} paid, {r['reserved_unpaid']:,} reserved and not paid), "
        + (
            f"{on_sale:,} on sale (never sold, or back from reservations that expired or were "
            "cancelled)"
            if on_sale
            else "none on sale"
        )
    )
    w = h["whole_run"]
    seconds = f"{w['seconds']:.1f} s" if w["seconds"] else "-"
    lines.append(
        f"whole run (from the crowd's first request to its last, {seconds}: the wait for the "
        f"opening, the sale, and the answers after the sell-out): {_n(w['requests_per_s'])} "
        f"requests/s, {r['requests']:,} requests, {r['failures']:,} failed; p99 "
        f"{_ms(w['p99_ms'])} ms (buy {_ms(w['buy_p99_ms'])} ms)"
    )
    return lines


def _locust(r: dict[str, Any]) -> list[str]:
    c = r.get("locust")
    if not c:
        return []
    name = BUY if BUY in c["endpoints"] else "Aggregated"
    row = c["endpoints"].get(name) or {}
    what = "buy" if name == BUY else "all"
    lines = [
        f"Locust's own figures (locust_stats.csv): {what} {row.get('locust_requests', 0):,} "
        f"requests at {row.get('locust_requests_per_s', 0):,.0f}/s; the report's "
        f"{_n(row.get('requests_per_s_sale_window'))}/s in the sale window, "
        f"{_n(row.get('requests_per_s_whole_run'))}/s over the whole run. Why they differ:"
    ]
    return lines + [f"  {why}" for why in c["why_they_differ"]]


def _cpu(r: dict[str, Any]) -> list[str]:
    cpu = r.get("cpu") or {}
    lines = []
    for key, title in (("sale_window", "the sale window"), ("whole_crowd", "the whole crowd")):
        w = cpu.get(key)
        if not w:
            continue
        shown = ", ".join(f"{k} {v:.2f}" for k, v in w["cores"].items())
        lines.append(
            f"CPU over {title} ({w['seconds']:.2f} s, {w['samples']} samples), in cores of "
            f"{r['machine_cores']}: {shown or '-'}; this machine {_n2(w['machine_busy_cores'])}"
        )
    for component, why in (cpu.get("not_measured") or {}).items():
        lines.append(f"CPU of {component}: not measured ({why})")
    return lines


def _n2(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(r: dict[str, Any]) -> str:
    s, pg = r["settings"], r["postgres"]
    setup = r["setup"]
    lines = [
        f"== launch rehearsal: sale {r['sale_id']} ({s['admission']}), stock {r['stock']:,} "
        f"({s['fcode_stock']:,} for F-codes), {s['bookers']:,} booked shoppers",
        (
            f"setup: {s['bookers']:,} bookings imported in "
            f"{setup.get('import_bookings_s', 0):.1f} s, {s['codes']:,} F-codes issued in "
            f"{setup.get('issue_fcodes_s', 0):.1f} s, "
            if s.get("sale_created_here", True)
            else f"setup: the operator's sale (--sale-id), its {s['bookers']:,} bookings and "
            f"{s['codes']:,} F-codes (--fcodes) as they were, "
        )
        + f"{s['tokens']:,} tokens minted in {setup.get('mint_tokens_s', 0):.1f} s",
        f"crowd: {s['users']:,} Locust users in {s['locust_processes']} process(es), "
        f"ramp {s['ramp_s']:g} s; service {s['service_url']} "
        + (
            f"({s['service_processes']} process(es), started here)"
            if s["service_started_here"]
            else "(already running)"
        ),
    ]
    if (pools := _pools(r)) is not None:
        lines.append(pools)
    for limit in s.get("not_rehearsed") or []:
        lines.append(f"not rehearsed (--sale-id): {limit}")
    if s.get("expected_sellout") is None and "expected_sellout" in s:
        lines.append("the crowd was not expected to sell this sale out (see what is not rehearsed)")
    if r["timing"]["crowd_late_s"] > 0:
        lines.append(
            f"NOTE: the crowd arrived {r['timing']['crowd_late_s']:.1f} s after the planned "
            "opening (setup overran it); times count from its arrival"
        )
    lines += _headline(r)
    lines += _table("latency per endpoint (ms), the sale window:", r["endpoints_during_sale"])
    lines += _table("latency per endpoint (ms), the whole run:", r["endpoints"])
    lines += _locust(r)
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
    if b.get("per_account"):
        lines.append(fairness_line(b["per_account"]))
    caught = pg["pg_caught_up_after_sellout_s"]
    lines.append(
        "PostgreSQL: "
        + (
            f"held every order {caught:.1f} s after the last unit went"
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
    lines += _cpu(r)
    load = " ".join(f"{x:.2f}" for x in r["load_average_before"])
    lines.append(f"load average before the crowd: {load} (other work here skews the figures)")
    if r.get("locust_exit_code"):
        lines.append(f"Locust exited with code {r['locust_exit_code']} (see locust.log)")
    if r.get("service_log_problems"):
        lines.append(f"service log: {r['service_log_problems']} warning/error line(s)")
    lines += _handoff(r)
    for v in r["violations"]:
        lines.append(f"VIOLATION: {v}")
    expectations = r.get("failed_expectations") or []
    for e in expectations:
        lines.append(f"EXPECTATION NOT MET: {e}")
    lines.append("verdict: " + verdict_line(r["violations"], expectations))
    return "\n".join(lines)


def fairness_line(a: dict[str, Any]) -> str:
    """Units won per account, bots against humans, with the sale's opening window beside."""
    window = f"window {a['opening_window_ms']:,} ms" if a["opening_window_ms"] else "no window"
    ratio = "-" if a["ratio"] is None else f"{a['ratio']:.2f}x"

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    return (
        f"units per account, bots against humans ({window}): ratio {ratio} (the bots' "
        f"{pct(a['share_of_units'])} of the public units won over their "
        f"{pct(a['share_of_accounts'])} of the accounts); {a['bot_accounts']:,} bot accounts "
        f"won {a['bot_units']:,}, {a['human_accounts']:,} booked human accounts that sent a buy "
        f"won {a['human_units']:,}"
    )


def verdict_line(violations: list[str], failed_expectations: list[str]) -> str:
    if not violations and not failed_expectations:
        return "all invariants hold"
    if not violations:
        return (
            f"FAILED: {len(failed_expectations)} expectation(s) not met "
            "(every invariant holds, but the launch was not rehearsed as planned)"
        )
    return f"FAILED: {len(violations)} violation(s)" + (
        f", {len(failed_expectations)} expectation(s) not met" if failed_expectations else ""
    )


def _clock(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3]


def _handoff(r: dict[str, Any]) -> list[str]:
    """The checkout hand-off: late payments, order events, and the checks' lines."""
    lines = []
    late = r.get("late_payments") or {}
    if late.get("orders"):
        answers = ", ".join(f"{k} {v:,}" for k, v in late["answers"].items()) or "none"
        lines.append(
            f"late payments (after the reservation expired): {late['orders']:,} ({answers}); "
            f"the sale at rest {r.get('rest_s') or 0:.0f} s after the crowd left"
        )
    e = r.get("events") or {}
    if e and e.get("source") != "receiver":
        lines.append(
            f"order events: {e['arrived']:,} of {e['expected']:,} read back through "
            "GET /v1/admin/events once the sale came to rest (a running service's relay cannot "
            "be pointed at the rehearsal's receiver: delivery order and times not measured)"
        )
    elif e:
        lines.append(
            f"order events: {e['arrived']:,} of {e['expected']:,} delivered to the rehearsal's "
            f"receiver {e.get('receiver_url')}, {e['repeats']:,} repeated; after its change was "
            f"written, each came within p50 {_s(e.get('lag_p50_s'))}, "
            f"p99 {_s(e.get('lag_p99_s'))}, max {_s(e.get('lag_max_s'))}"
        )
        after = e.get("their_events_delivered_after_s")
        lines.append(
            f"  every order in PostgreSQL at {_clock(e.get('all_orders_in_postgres_at'))}; "
            + (
                "their events NOT all delivered"
                if after is None
                else "their events all delivered by then"
                if after <= 0
                else f"their events all delivered {after:.2f} s after"
            )
        )
        gap = e.get("gap_s")
        lines.append(
            f"  the last change written to PostgreSQL at {_clock(e.get('last_written_at'))}, "
            f"the last event delivered at {_clock(e.get('last_arrived_at'))}"
            + (f" ({gap:.2f} s later)" if gap is not None else "")
        )
    for c in r.get("checks", []):
        lines.append(f"check: {c['check']}: {'ok' if c['ok'] else 'FAILED'} ({c['detail']})")
    return lines


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"
