"""The rehearsal's figures: from the crowd's records (every request with its latency and
verdict, every 201) and the watcher's samples (units, PostgreSQL's lag)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from loadtest.plan import Plan
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


def sale_timing(plan: Plan, records: Records, units: dict[str, Any]) -> dict[str, Any]:
    """When the sale opened (for the crowd), when the last unit went, and the buy rate."""
    first_request = float(records.start.min()) if records.start.size else plan.opens_at
    # a setup that overran the planned start: the sale opened for the crowd when it came
    opened = max(plan.opens_at, first_request)
    times = sorted(e["t"] for e in records.reserved.values())
    sold_out = units["available"] <= 0 and units["fcode_available"] <= 0
    last = times[-1] if times else None
    sellout_t = last if sold_out else None
    span = (last - opened) if last is not None else 0.0
    in_sale = ((records.start >= opened) & (records.start <= last)) if last else None
    return {
        "opened_at": opened,
        "crowd_late_s": round(max(0.0, first_request - plan.opens_at), 2),
        "sold_out": sold_out,
        "sellout_at": sellout_t,
        "last_201_at": last,
        "sellout_s": round(sellout_t - opened, 3) if sellout_t else None,
        "buys": len(times),
        "buys_per_s": round(len(times) / span, 1) if span > 0 else None,
        "requests_per_s_during_sale": (
            round(int(in_sale.sum()) / span, 1) if in_sale is not None and span > 0 else None
        ),
    }


def postgres_lag(records: Records, sellout_at: float | None, verdict: Verdict) -> dict[str, Any]:
    """How far the order writer fell behind, and how long after the sell-out PostgreSQL held
    every order (from the watcher's samples; else from the verdict's own wait)."""
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
    if sellout_at is not None:
        for s, lag in zip(samples, lags, strict=True):
            if s["t"] >= sellout_at and lag <= 0:
                caught = s["t"] - sellout_at
                break
        if caught is None and verdict.pg_complete_at is not None:
            caught = verdict.pg_complete_at - sellout_at
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
    """What the scalpers' scripts got: units, their share of the stock, and their refusals."""
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
    }


def build_report(
    plan: Plan, records: Records, verdict: Verdict, extra: dict[str, Any]
) -> dict[str, Any]:
    u = verdict.units
    timing = sale_timing(plan, records, u)
    stats = endpoint_stats(records)
    total = stats.get("Aggregated", {})
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
        "sellout_s": timing["sellout_s"],
        "buys_per_s": timing["buys_per_s"],
        "requests_per_s": total.get("requests_per_s"),
        "p99_ms": total.get("p99_ms"),
        "violations": verdict.violations,
        "sale_id": plan.sale_id,
        "timing": timing,
        "requests": total.get("requests", 0),
        "failures": total.get("failures", 0),
        "endpoints": stats,
        # from the opening second to the last unit: the spike itself
        "endpoints_during_sale": (
            endpoint_stats(records, (timing["opened_at"], timing["last_201_at"]))
            if timing["last_201_at"]
            else {}
        ),
        "errors": dict(errors.most_common()),
        "failures_by_endpoint": failures,
        "answers": answers(records),
        "bots": bots(plan, records),
        "postgres": postgres_lag(records, timing["sellout_at"], verdict),
        "crowd": {
            "pools": records.pools,
            "locust_processes_recording": records.processes,
        },
        **extra,
    }
