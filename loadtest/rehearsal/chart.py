"""chart.png, over time from the opening second: units left and units taken a second, requests
a second by endpoint, latency percentiles, and the CPU each component used.

Every figure about units (units left, units a second, the sell-out line and the title's time
to sell out and buys a second) comes from one source, the sale's timeline (headline.py: the
orders in PostgreSQL), so the panels cannot contradict each other; requests and latencies are
the crowd's own records, the CPU the driver's samples of each component's processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt
import numpy as np

from loadtest.records import BUY, ENDPOINTS
from loadtest.rehearsal.headline import Timeline
from loadtest.rehearsal.processes import CpuSampler
from loadtest.rehearsal.records_in import Records


def _bin_width(span_s: float) -> float:
    return 0.25 if span_s <= 20 else 0.5 if span_s <= 120 else 1.0


def title(report: dict[str, Any]) -> str:
    """The headline, as the report's: the sale window's figures."""
    h = report["headline"]
    sellout = f"{report['sellout_s']:.2f} s" if report["sellout_s"] is not None else "NOT sold out"
    return (
        f"{report['sale_id']}: stock {report['stock']:,}, sold {report['sold']:,}, "
        f"sell-out {sellout}, {report['buys_per_s'] or '-'} buys/s, "
        f"buy p99 {h['buy_p99_ms'] if h['buy_p99_ms'] is not None else '-'} ms "
        "(the sale window)" + ("" if not report["violations"] else "  (VIOLATIONS)")
    )


def units_left_steps(timeline: Timeline, opened: float) -> tuple[np.ndarray, np.ndarray]:
    """The units left, as steps (seconds from the opening, units left from then on), from one
    second before the opening; a step to 0 is exactly at the sell-out."""
    t = np.concatenate([[-1.0], timeline.times - opened])
    left = np.concatenate([[timeline.stock], timeline.stock - timeline.held])
    return t, np.maximum(0, left)


def draw_chart(
    path: Path,
    records: Records,
    opened: float,
    report: dict[str, Any],
    timeline: Timeline,
    cpu: CpuSampler | None = None,
) -> None:
    start = records.start - opened
    end = float(start.max()) if start.size else 1.0
    first = min(0.0, float(start.min())) if start.size else 0.0
    width = _bin_width(end - first)
    edges = np.arange(np.floor(first / width) * width, end + 2 * width, width)
    centers = edges[:-1] + width / 2

    fig, (units_ax, rate_ax, lat_ax, cpu_ax) = plt.subplots(
        4, 1, figsize=(11, 13), sharex=True, height_ratios=[1, 1, 1, 0.8]
    )
    fig.suptitle(title(report))

    t, left = units_left_steps(timeline, opened)
    units_ax.step(t, left, where="post", color="tab:blue", label="units left")
    units_ax.set_ylabel("units left")
    units_ax.set_ylim(bottom=0, top=max(1, timeline.stock) * 1.05)
    buys_ax = units_ax.twinx()
    counts, _ = np.histogram(timeline.created - opened, bins=edges)
    buys_ax.bar(centers, counts / width, width=width, color="tab:green", alpha=0.4,
                label="units taken a second")  # fmt: skip
    buys_ax.set_ylabel("units/s")
    handles = units_ax.get_legend_handles_labels()[0] + buys_ax.get_legend_handles_labels()[0]
    units_ax.legend(handles=handles, loc="upper right")
    units_ax.set_title(f"units, by {timeline.clock}", fontsize="small", loc="left")
    sold_out_at = timeline.sold_out_at
    if sold_out_at is not None:
        for ax in (units_ax, rate_ax, lat_ax, cpu_ax):
            ax.axvline(sold_out_at - opened, color="gray", ls="--", lw=1)

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
    lat_ax.legend(loc="upper right", fontsize="small")

    _cpu_panel(cpu_ax, cpu, edges, opened, report)
    cpu_ax.set_xlim(edges[0] - width, edges[-1])
    cpu_ax.set_xlabel("seconds since the opening second (dashed: sold out)")
    for ax in (units_ax, rate_ax, lat_ax, cpu_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu_panel(
    ax: Any,
    cpu: CpuSampler | None,
    edges: np.ndarray,
    opened: float,
    report: dict[str, Any],
) -> None:
    cores = report.get("machine_cores") or 1
    # the kernel counts CPU time in ticks of 10 ms: bins of half a second at least, or a
    # machine of 2 cores shows 2.2 now and then
    step = max(1, int(np.ceil(0.5 / (edges[1] - edges[0])))) if edges.size > 1 else 1
    coarse = edges[::step]
    mids = coarse[:-1] + np.diff(coarse) / 2
    series = cpu.series(coarse + opened) if cpu is not None and coarse.size > 1 else {}
    for component, values in series.items():
        if component == "machine":
            ax.plot(mids, values, color="black", lw=1.5, label="this machine (all work)")
        else:
            ax.plot(mids, values, label=component)
    ax.axhline(cores, color="gray", ls=":", lw=1)
    ax.axhline(1.0, color="red", ls=":", lw=0.8)  # one core: a saturated event loop
    ax.set_ylim(bottom=0, top=cores * 1.1)
    b = report.get("bottleneck") or {}
    ax.set_ylabel("CPU (cores)")
    ax.set_title(
        f"CPU per component, every 0.1 s (dotted: 1 core, and the machine's {cores}); "
        f"bottleneck: {b.get('component', '-')}",
        fontsize="small",
        loc="left",
    )
    if series:
        ax.legend(loc="upper right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "CPU not sampled", transform=ax.transAxes, ha="center")


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
