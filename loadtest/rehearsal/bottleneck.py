"""Which component set the pace of the sale: one call, with its evidence.

Over the sale window, from the CPU each component's processes used (processes.CpuSampler,
sampled every 100 ms):

- a component is **saturated** when one of its processes ran at 90 % of a core or more: a
  Locust process, a service worker, Redis and a PostgreSQL backend each do their work on one
  thread, so one such process at a full core is a queue in front of everything it serves (90 %
  is Locust's own threshold for its CPU warning, which counts as well, when it was logged
  during the window);
- ``bottleneck`` is the saturated component, the load generator first (when the crowd is the
  limit, no other figure says anything about the service), then the service, Redis,
  PostgreSQL;
- nothing saturated: ``unknown`` when a component could not be measured (a service on another
  machine), when this machine's cores were busy (90 % or more of them: the components, and any
  other work here, waited for a core, and none of them shows it alone) or when the window
  held too few samples to tell; else ``none``: the crowd's own pace set the rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from loadtest.rehearsal.processes import GENERATOR, POSTGRES, REDIS, REHEARSAL, SERVICE

SATURATED = 0.9  # of one core, for one process
MACHINE_BUSY = 0.9  # of every core
MIN_SAMPLES = 3
ORDER = (GENERATOR, SERVICE, REDIS, POSTGRES)
NAMES = {GENERATOR: "the load generator (Locust)", SERVICE: "the service", REDIS: "Redis",
         POSTGRES: "PostgreSQL", REHEARSAL: "the rehearsal's driver"}  # fmt: skip


def _cores(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def call_bottleneck(
    cpu: Mapping[str, Any],
    *,
    machine_cores: int,
    unknown: Mapping[str, str],
    locust_warned: bool,
    window: str,
) -> dict[str, Any]:
    """``cpu``: a window's figures (WindowCpu.to_json); ``unknown``: components not measured,
    with why; ``locust_warned``: Locust logged its CPU warning during the window."""
    cores: Mapping[str, float] = cpu.get("cores", {})
    busiest: Mapping[str, Mapping[str, Any]] = cpu.get("busiest_process", {})
    machine = cpu.get("machine_busy_cores")
    evidence = [
        f"window: {window}, {cpu.get('seconds', 0):.2f} s, {cpu.get('samples', 0)} CPU "
        "samples (every 0.1 s)"
    ]
    for component in (*ORDER, REHEARSAL):
        if component in unknown:
            evidence.append(f"{NAMES[component]}: not measured ({unknown[component]})")
        elif component in cores:
            top = busiest.get(component)
            evidence.append(
                f"{NAMES[component]}: {_cores(cores[component])} cores in "
                f"{cpu.get('processes', {}).get(component, 0)} process(es)"
                + (
                    f", the busiest {_cores(top['cores'])} of a core (pid {top['pid']}"
                    + (f", {top['what']}" if top.get("what") else "")
                    + ")"
                    if top
                    else ""
                )
            )
    if machine is not None:
        ours = sum(cores.values())
        steal = cpu.get("machine_steal_cores") or 0.0
        evidence.append(
            f"this machine: {_cores(machine)} of {machine_cores} cores busy, "
            f"{_cores(max(0.0, machine - ours))} of them other work than the rehearsal's"
            + (f"; {steal:.2f} cores taken by the hypervisor (steal)" if steal >= 0.05 else "")
        )
    if locust_warned:
        evidence.append("Locust logged its CPU warning (a process above 90 %) during the window")
    saturated = [
        c
        for c in ORDER
        if (busiest.get(c, {}).get("cores", 0.0) >= SATURATED) or (c == GENERATOR and locust_warned)
    ]
    if saturated:
        component = saturated[0]
        also = [NAMES[c] for c in saturated[1:]]
        why = f"{NAMES[component]} was saturated: a process of it at a full core" + (
            f" (saturated too: {', '.join(also)})" if also else ""
        )
    elif cpu.get("samples", 0) < MIN_SAMPLES:
        component, why = "unknown", "the window held too few CPU samples to tell"
    elif any(c in unknown for c in ORDER):
        missing = ", ".join(NAMES[c] for c in ORDER if c in unknown)
        component = "unknown"
        why = f"nothing measured was saturated, but {missing} could not be measured"
    elif machine is not None and machine >= MACHINE_BUSY * machine_cores:
        component = "unknown"
        why = (
            f"this machine's {machine_cores} cores were busy ({machine / machine_cores:.0%}): "
            "every component waited for a core, none saturated one of its own; the service's "
            "figures are a lower bound (run the crowd on another machine)"
        )
    elif machine is None:
        component, why = "unknown", "this machine's CPU was not measured"
    else:
        component = "none"
        why = (
            f"no process was saturated and this machine had {machine_cores - machine:.2f} cores "
            "idle: the crowd's pace set the rate (more --users would push harder)"
        )
    return {"component": component, "why": why, "evidence": evidence}


def locust_cpu_warnings(log_text: str) -> list[float]:
    """When Locust logged its CPU warning (a process above 90 %; the master also names a
    worker that was), epoch seconds, from its log's timestamps (local time)."""
    found = []
    for line in log_text.splitlines():
        if "CPU usage above" not in line and "exceeded cpu threshold" not in line:
            continue
        try:
            stamp = line[1 : line.index("]")]
            found.append(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp())
        except ValueError:
            continue
    return found


def warned_within(warnings: list[float], begin: float, end: float, slack_s: float = 3.0) -> bool:
    """Whether a warning falls in the window; Locust checks once a heartbeat (1 to 3 s),
    looking back over the interval, so one a little after the window counts too."""
    return any(begin - slack_s <= t <= end + slack_s for t in warnings)
