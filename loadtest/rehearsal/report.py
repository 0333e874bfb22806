"""The rehearsal's figures: from the crowd's records (every request with its latency and
verdict, every 201) and the watcher's samples (units, PostgreSQL's lag)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from loadtest.plan import Plan
from loadtest.rehearsal.headline import Timeline, headline, sale_timing, timeline_from_records
from loadtest.rehearsal.records_in import Records
from loadtest.rehearsal.verdict import Verdict


def _latency(ms: np.ndarray, failed: np.ndarray, span_s: float) -> dict[str, Any]:
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "requests": int(ms.size),
        "failures": int(failed.sum()),
        "requests_per_s": round(ms.size / span_s, 1),
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "max_ms": round(float(ms.max()), 1),
    }


def endpoint_stats(
    records: Records, window: tuple[float, float] | None = None
) -> dict[str, dict[str, Any]]:
    """Per endpoint and "Aggregated", from every request the crowd made (or those started
    within ``window``): the same events Locust's statistics count, kept exactly (Locust's CSV
    is rewritten once a second, so its last second can be missing, and it rounds latencies
    to whole milliseconds)."""
    keep = np.ones(records.start.size, dtype=bool)
    if window is not None:
        keep = (records.start >= window[0]) & (records.start <= window[1])
    start, ms, endpoint = records.start[keep], records.ms[keep], records.endpoint[keep]
    failed = records.failed[keep]
    if not start.size:
        return {}
    if window is not None:
        span = window[1] - window[0]
    else:
        span = float((start + ms / 1000).max() - start.min())
    span = max(1e-3, span)
    out = {}
    for index in np.unique(endpoint):
        mine = endpoint == index
        out[records.endpoint_name(int(index))] = _latency(ms[mine], failed[mine], span)
    out["Aggregated"] = _latency(ms, failed, span)
    return out


def postgres_lag(records: Records, last_unit_at: float | None, verdict: Verdict) -> dict[str, Any]:
    """How far the order writer fell behind, and how long after the last unit went (the
    sell-out, or the last unit sold of a sale that did not sell out) PostgreSQL held every
    order: from the watcher's samples; else from the verdict's own wait."""
    samples = [s for s in records.samples if "pg_orders" in s]
    lags = [
        s["reserved"]
        + s["paid"]
        + s["expired"]
        - s.get("paid_late", 0)
        + s["cancelled"]
        - s["pg_orders"]
        for s in samples
    ]
    caught = None
    if last_unit_at is not None:
        for s, lag in zip(samples, lags, strict=True):
            if s["t"] >= last_unit_at and lag <= 0:
                caught = s["t"] - last_unit_at
                break
        if caught is None and verdict.pg_complete_at is not None:
            caught = verdict.pg_complete_at - last_unit_at
    stats_ms = sorted(s["ms"] for s in samples)
    return {
        "admin_stats_ms_median": stats_ms[len(stats_ms) // 2] if stats_ms else None,
        "admin_stats_ms_max": stats_ms[-1] if stats_ms else None,
        "pg_caught_up_after_sellout_s": round(max(0.0, caught), 2) if caught is not None else None,
        "pg_max_lag_orders": max(lags, default=0),
        "pg_verdict_wait_s": verdict.pg_wait_s,
        "admin_stats_samples": len(samples),
        "admin_stats_errors": sum(
            1 for s in records.samples if s.get("kind") == "stats" and "error" in s
        ),
        "public_sale_errors": sum(
            1 for s in records.samples if s.get("kind") == "units" and "error" in s
        ),
    }


def answers(records: Records) -> dict[str, dict[str, int]]:
    """What each endpoint answered, by role: {"POST /v1/sales/{id}/buy": {"booked 201": n}}."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for (endpoint, role, answer), n in records.answers.items():
        out[endpoint][f"{role}: {answer}"] += n
    return {e: dict(c.most_common()) for e, c in sorted(out.items())}


def bots(plan: Plan, records: Records) -> dict[str, Any]:
    """What the scalpers' scripts got: units, their share of the stock, their refusals, and
    the units won per account against the humans' (``per_account``)."""
    sent: Counter[str] = Counter()
    for (_, role, answer), n in records.answers.items():
        if role == "bot":
            sent[answer] += n
    requests = sum(sent.values())
    refused = {a: n for a, n in sent.items() if a.startswith("429") or "fcode_invalid" in a}
    units = sum(1 for order in records.reserved.values() if order.get("lane") == "bot")
    return {
        "users": plan.bot_users,
        "share_of_users": plan.bot_users / plan.users if plan.users else 0.0,
        "requests": requests,
        "refused": sum(refused.values()),
        "refused_by_answer": dict(Counter(refused).most_common()),
        "units": units,
        "share_of_units": units / plan.stock if plan.stock else 0.0,
        "answers": dict(sent.most_common()),
        "per_account": per_account(plan, records),
    }


def per_account(plan: Plan, records: Records) -> dict[str, Any]:
    """Units won per account, bots against humans, in the public lane (where they compete):
    the bots' accounts and the booked human accounts that sent at least one public buy, and
    the public units each side won (201s). ``ratio`` is the bots' share of those units over
    their share of the accounts: 1.0 when a bot's account wins as much as a human's. Walk-ins
    (never booked: they cannot buy) and F-code holders (their own lane) are not counted."""
    bot_accounts = len(records.accounts.get("bot", ()))
    human_accounts = len(records.accounts.get("booked", ()))
    bot_units = sum(1 for order in records.reserved.values() if order.get("lane") == "bot")
    human_units = sum(1 for order in records.reserved.values() if order.get("lane") == "public")
    accounts, won = bot_accounts + human_accounts, bot_units + human_units
    share_of_accounts = bot_accounts / accounts if accounts else None
    share_of_units = bot_units / won if won else None
    ratio = (
        share_of_units / share_of_accounts
        if share_of_units is not None and share_of_accounts
        else None
    )
    return {
        "opening_window_ms": plan.opening_window_ms,
        "bot_accounts": bot_accounts,
        "bot_accounts_planned": plan.bot_users * plan.bot_accounts,
        "human_accounts": human_accounts,
        "walk_in_accounts": len(records.accounts.get("walk-in", ())),
        "bot_units": bot_units,
        "human_units": human_units,
        "share_of_accounts": _round(share_of_accounts),
        "share_of_units": _round(share_of_units),
        "ratio": _round(ratio),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def build_report(
    plan: Plan,
    records: Records,
    verdict: Verdict,
    extra: dict[str, Any],
    timeline: Timeline | None = None,
) -> dict[str, Any]:
    """``timeline``: the units over time from PostgreSQL's orders (headline.py); without it,
    from the crowd's 201s, and the report says so."""
    u = verdict.units
    timing = sale_timing(plan, records, timeline or timeline_from_records(records, plan.stock))
    stats = endpoint_stats(records)
    total = stats.get("Aggregated", {})
    # from the opening second to the last unit: the spike itself, and the headline
    during = (
        endpoint_stats(records, (timing["opened_at"], timing["last_unit_at"]))
        if timing["window_s"]
        else {}
    )
    top = headline(timing, during, stats, records)
    errors: Counter[str] = Counter()
    for (_, problem), n in records.problems.items():
        errors[problem] += n
    failures = [
        {"endpoint": e, "error": p, "count": n} for (e, p), n in records.problems.most_common()
    ]
    return {
        "stock": plan.stock,
        "sold": u["reserved"] + u["paid"],
        "paid": u["paid"],
        "reserved_unpaid": u["reserved"],
        "available": u["available"],
        "fcode_available": u["fcode_available"],
        # the headline: the sale window (the whole run's figures are in headline.whole_run)
        "sellout_s": timing["sellout_s"],
        "buys_per_s": timing["buys_per_s"],
        "requests_per_s": top["requests_per_s"],
        "p99_ms": top["buy_p99_ms"],
        "headline": top,
        "violations": verdict.violations,
        "failed_expectations": verdict.failed_expectations,
        "sale_id": plan.sale_id,
        "timing": timing,
        "requests": total.get("requests", 0),
        "failures": total.get("failures", 0),
        "endpoints": stats,
        "endpoints_during_sale": during,
        "errors": dict(errors.most_common()),
        "failures_by_endpoint": failures,
        "answers": answers(records),
        "bots": bots(plan, records),
        "postgres": postgres_lag(records, timing["last_unit_at"], verdict),
        "crowd": {
            "pools": records.pools,
            "locust_processes_recording": records.processes,
        },
        **extra,
    }
