"""chart.png: units left and buys per second, requests per second by endpoint, and latency
percentiles, over time from the opening second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
import numpy as np

from loadtest.records import BUY, ENDPOINTS
from loadtest.rehearsal.records_in import Records


def _bin_width(span_s: float) -> float:
    return 0.25 if span_s <= 20 else 0.5 if span_s <= 120 else 1.0


def draw_chart(path: Path, records: Records, opened: float, report: dict[str, Any]) -> None:
    start = records.start - opened
    end = float(start.max()) if start.size else 1.0
    first = min(0.0, float(start.min())) if start.size else 0.0
    width = _bin_width(end - first)
    edges = np.arange(np.floor(first / width) * width, end + 2 * width, width)
    centers = edges[:-1] + width / 2

    fig, (units_ax, rate_ax, lat_ax) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    title = (
        f"{report['sale_id']}: stock {report['stock']:,}, sold {report['sold']:,}, "
        f"sell-out {report['sellout_s'] or '-'} s, {report['buys_per_s'] or '-'} buys/s, "
        f"p99 {report['p99_ms'] or '-'} ms"
    )
    fig.suptitle(title + ("" if not report["violations"] else "  (VIOLATIONS)"))

    samples = [s for s in records.samples if s.get("kind") == "units" and "available" in s]
    if samples:
        t = [s["t"] - opened for s in samples]
        left = [s["available"] + s["fcode_available"] for s in samples]
        units_ax.step(t, left, where="post", color="tab:blue", label="units left (watcher)")
    units_ax.set_ylabel("units left")
    units_ax.set_ylim(bottom=0)
    buys_ax = units_ax.twinx()
    won = np.array([e["t"] - opened for e in records.reserved.values()])
    counts, _ = np.histogram(won, bins=edges)
    buys_ax.bar(
        centers,
        counts / width,
        width=width,
        color="tab:green",
        alpha=0.4,
        label="successful buys/s (201)",
    )
    buys_ax.set_ylabel("buys/s")
    handles = units_ax.get_legend_handles_labels()[0] + buys_ax.get_legend_handles_labels()[0]
    units_ax.legend(handles=handles, loc="upper right")
    if report["timing"]["sellout_at"]:
        for ax in (units_ax, rate_ax, lat_ax):
            ax.axvline(report["timing"]["sellout_at"] - opened, color="gray", ls="--", lw=1)

    for index, name in enumerate(ENDPOINTS):
        mine = start[records.endpoint == index]
        if mine.size:
            c, _ = np.histogram(mine, bins=edges)
            rate_ax.plot(centers, c / width, label=name)
    bad = start[records.failed == 1]
    if bad.size:
        c, _ = np.histogram(bad, bins=edges)
        rate_ax.plot(centers, c / width, color="red", lw=2, label="failures")
    rate_ax.set_ylabel("requests/s")
    if start.size:
        rate_ax.legend(loc="upper right", fontsize="small")

    bins = np.digitize(start, edges) - 1
    for q, style in ((50, ":"), (95, "--"), (99, "-")):
        lat_ax.plot(
            centers,
            _percentile_per_bin(records.ms, bins, len(centers), q),
            ls=style,
            color="tab:purple",
            label=f"p{q} all requests",
        )
    is_buy = records.endpoint == ENDPOINTS.index(BUY)
    buy_p99 = _percentile_per_bin(records.ms[is_buy], bins[is_buy], len(centers), 99)
    lat_ax.plot(centers, buy_p99, color="tab:orange", label="p99 buy")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_xlim(edges[0] - width, edges[-1])  # the watcher's samples start earlier
    lat_ax.set_xlabel("seconds since the opening second (dashed: sold out)")
    lat_ax.legend(loc="upper right", fontsize="small")
    for ax in (units_ax, rate_ax, lat_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _percentile_per_bin(ms: np.ndarray, bins: np.ndarray, n: int, q: float) -> np.ndarray:
    out = np.full(n, np.nan)
    if not ms.size:
        return out
    order = np.argsort(bins, kind="stable")
    sorted_bins, sorted_ms = bins[order], ms[order]
    cuts = np.searchsorted(sorted_bins, np.arange(n + 1))
    for i in range(n):
        chunk = sorted_ms[cuts[i] : cuts[i + 1]]
        if chunk.size:
            out[i] = np.percentile(chunk, q)
    return out
