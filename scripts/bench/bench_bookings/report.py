"""The report: out() prints a line and keeps it for report.txt, progress() tells stderr what
runs; n() and pct() are the number formats of the figures."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

LINES: list[str] = []


class BenchError(RuntimeError):
    """The benchmark could not go on; the message says why."""


def progress(message: str) -> None:
    print(f"bench-bookings: {message}", file=sys.stderr, flush=True)


def out(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def save(path: Path) -> None:
    """Every line out() printed, into ``path``."""
    path.write_text("\n".join(LINES) + "\n")


def n(x: int | float) -> str:
    """A count with thousands separators, no decimals."""
    return f"{x:,.0f}"


def pct(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile of values sorted in ascending order (nan without values)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]
