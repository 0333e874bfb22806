"""``flashsale sales watch``: a sale's numbers, live, in the terminal (rich).

Polls ``GET /v1/admin/sales/{id}/stats`` every second and shows the stock as a bar (paid,
reserved, F-code units left, units left), the pace (units sold a second, from successive
polls: over the last poll and the last ten seconds), the booking queue, the orders PostgreSQL
has and the dead letters. Stops once the sale has ended (showing its last numbers), or on
Ctrl-C. A poll that fails is shown and retried; the view goes on.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from flashsale.cli.admin_client import AdminClient, ClientError, Refused, sale_path

BAR_WIDTH = 50
WINDOW_S = 10.0
# the bar's parts, in order, with their colours
_PARTS = (("paid", "green"), ("reserved", "yellow"), ("fcode_available", "magenta"),
          ("available", "blue"))  # fmt: skip


@dataclass
class Pace:
    """Units sold a second, from the ``sold_total`` of successive polls."""

    polls: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=120))

    def add(self, at_s: float, sold_total: int) -> None:
        self.polls.append((at_s, sold_total))
        while self.polls and at_s - self.polls[0][0] > WINDOW_S + 0.5:
            self.polls.popleft()

    def last(self) -> float | None:
        if len(self.polls) < 2:
            return None
        (t0, n0), (t1, n1) = self.polls[-2], self.polls[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None

    def window(self) -> float | None:
        if len(self.polls) < 2:
            return None
        (t0, n0), (t1, n1) = self.polls[0], self.polls[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None


def stock_bar(stats: dict[str, Any], width: int = BAR_WIDTH) -> Text:
    """The stock as one bar: a cell a ``stock / width`` units, each part at least one cell
    when it holds any unit."""
    stock = max(1, int(stats["stock"]))
    cells = [(round(int(stats.get(name, 0)) * width / stock), name, colour)
             for name, colour in _PARTS]  # fmt: skip
    cells = [(max(n, 1) if stats.get(name) else 0, name, colour) for n, name, colour in cells]
    bar = Text()
    for n, _, colour in cells:
        bar.append("█" * n, style=colour)
    return bar


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}/s"


def view(sale_id: str, stats: dict[str, Any] | None, pace: Pace, problem: str | None) -> Panel:
    if stats is None:
        return Panel(Text(problem or "waiting for the first numbers..."), title=f"sale {sale_id}")
    numbers = Table.grid(padding=(0, 2))
    numbers.add_column(style="bold")
    numbers.add_column()
    legend = Text()
    for name, colour in _PARTS:
        label = {"fcode_available": "F-code left", "available": "left"}.get(name, name)
        legend.append("■ ", style=colour).append(f"{label} {int(stats.get(name, 0)):,}   ")
    stock = Text(f"{int(stats['stock']):,}   ").append(stock_bar(stats))
    numbers.add_row("stock", stock)
    numbers.add_row("", legend)
    if not stats.get("units_add_up", True):
        numbers.add_row("", Text("units do not add up: run flashsale reconcile", style="red"))
    numbers.add_row(
        "pace",
        f"{_rate(pace.last())} (last poll), {_rate(pace.window())} (last {WINDOW_S:.0f} s); "
        f"{int(stats['sold_total']):,} sold so far",
    )
    late = f", {stats['paid_late']:,} of the paid late" if stats.get("paid_late") else ""
    numbers.add_row(
        "returned",
        f"{int(stats['expired']):,} expired, {int(stats['cancelled']):,} cancelled{late}",
    )
    if stats.get("reserved"):
        numbers.add_row(
            "unpaid",
            f"{int(stats['reserved']):,} reserved; the last expires at "
            f"{stats.get('last_reservation_expires_at')}",
        )
    if "waiting" in stats:
        numbers.add_row(
            "queue",
            f"admitted {int(stats['admitted']):,}, waiting {int(stats['waiting']):,} "
            f"(bookings {int(stats.get('bookings', 0)):,})",
        )
    elif "bookings" in stats:
        numbers.add_row("bookings", f"{int(stats['bookings']):,}")
    pg = stats.get("orders_in_postgres", {})
    numbers.add_row(
        "postgresql", ", ".join(f"{k} {v:,}" for k, v in pg.items() if isinstance(v, int))
    )
    letters = int(stats.get("dead_letters", 0))
    numbers.add_row(
        "dead letters",
        Text(f"{letters:,}" + (": flashsale deadletters " + sale_id if letters else ""),
             style="red" if letters else ""),
    )  # fmt: skip
    status = f"{stats['status']} (control {stats['control']})"
    head = Text(f"{stats.get('name', '')}   ").append(status, style="bold")
    head.append(f"   {stats['starts_at']} to {stats['ends_at']}")
    parts: list[RenderableType] = [head, numbers]
    if problem:
        parts.append(Text(problem, style="red"))
    return Panel(Group(*parts), title=f"sale {sale_id}")


def watch(api: AdminClient, sale_id: str, *, interval_s: float = 1.0, once: bool = False) -> int:
    """Show the sale's numbers until it ends or Ctrl-C; 0, or raises for a sale not found."""
    path = sale_path(sale_id, "stats")
    stats = api.call("GET", path)["stats"]  # a wrong id or token ends it here (exit 1)
    pace = Pace()
    pace.add(time.monotonic(), int(stats["sold_total"]))
    console = Console()
    if once:
        console.print(view(sale_id, stats, pace, None))
        return 0
    problem = None
    try:
        with Live(view(sale_id, stats, pace, None), console=console, auto_refresh=False) as live:
            while stats["status"] != "ended":
                time.sleep(interval_s)
                try:
                    stats = api.call("GET", path)["stats"]
                    problem = None
                    pace.add(time.monotonic(), int(stats["sold_total"]))
                except (ClientError, Refused) as exc:
                    problem = f"{time.strftime('%H:%M:%S')} the last poll failed: {exc}"
                live.update(view(sale_id, stats, pace, problem), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0
