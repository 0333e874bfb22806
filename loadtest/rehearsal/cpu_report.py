"""What the rehearsal measures of each component's CPU, and the bottleneck call from it.

The components are found on this machine: the service started here (its process tree) or a
running one by the port of its URL (the processes listening on it and what their ``flashsale
serve`` started), Locust's processes as they start, Redis by its ``INFO`` pid or its port,
PostgreSQL by its port (the postmaster and its backends), and the driver itself. One that runs
elsewhere, or whose processes cannot be seen, is reported as not measured, with why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loadtest.rehearsal.bottleneck import call_bottleneck, locust_cpu_warnings, warned_within
from loadtest.rehearsal.processes import (
    GENERATOR,
    POSTGRES,
    REDIS,
    REHEARSAL,
    SERVICE,
    CpuSampler,
    find_listener_tree,
    find_service,
    tree,
)
from loadtest.rehearsal.stores import redis_pid


def sampler_for(
    service_pid: int | None, service_url: str, redis_url: str, database_url: str
) -> tuple[CpuSampler, list[str]]:
    """A sampler with every component it can find here (Locust joins when it starts), and a
    line for the console on each component it cannot measure."""
    cpu = CpuSampler()
    roots, why, listeners = find_service(service_url)
    for listener in listeners:
        cpu.labels[listener] = "an HTTP worker of the service (listens on its port)"
    if service_pid is not None:
        cpu.add_tree(SERVICE, service_pid, "flashsale serve")
    elif roots is None:
        cpu.not_measured(SERVICE, why)
    else:
        cpu.add_trees(SERVICE, roots)
    if (pid := redis_pid(redis_url)) is not None:
        cpu.add_tree(REDIS, pid, "redis-server")
    else:
        r = urlsplit(redis_url)
        redis_pids, why = find_listener_tree(r.hostname, r.port or 6379, "redis")
        if redis_pids:
            cpu.add_trees(REDIS, lambda: redis_pids)
        else:
            cpu.not_measured(REDIS, why)
    pg = urlsplit(database_url)
    postmaster, why = find_listener_tree(pg.hostname, pg.port or 5432, "postgres")
    if postmaster:
        for p in postmaster:
            cpu.labels[p] = "the postmaster"
        cpu.add_trees(POSTGRES, lambda: postmaster)
    else:
        cpu.not_measured(POSTGRES, why)
    me = os.getpid()
    cpu.add(REHEARSAL, lambda: [me])
    cpu.labels[me] = "the rehearsal's driver"
    return cpu, [f"the CPU of {c} is not measured: {why}" for c, why in cpu.unknown.items()]


def add_locust(cpu: CpuSampler, pid: int, role: str) -> None:
    cpu.add(GENERATOR, lambda: tree(pid))
    cpu.labels[pid] = f"Locust {role}"


def cpu_findings(cpu: CpuSampler, report: dict[str, Any], out: Path) -> dict[str, Any]:
    """report.json's ``cpu`` and ``bottleneck``: each component over the sale window and over
    the whole crowd, and the one call."""
    t = report["timing"]
    begin = t["opened_at"]
    end = t["last_unit_at"] or t["crowd_ended_at"] or begin
    sale = cpu.window(begin, end).to_json(cpu.labels)
    crowd_begin = t["crowd_started_at"] or begin
    crowd = cpu.window(crowd_begin, t["crowd_ended_at"] or end).to_json(cpu.labels)
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(out.glob("locust*.log")))
    warnings = locust_cpu_warnings(logs)
    call = call_bottleneck(
        sale,
        machine_cores=os.cpu_count() or 1,
        unknown=cpu.unknown,
        locust_warned=warned_within(warnings, begin, end),
        window="the sale (from the opening second to the last unit)",
    )
    if warnings and not warned_within(warnings, begin, end):
        call["evidence"].append(
            "Locust logged its CPU warning outside the sale window (see locust*.log)"
        )
    return {
        "cpu": {
            "interval_s": cpu.interval_s,
            "sale_window": sale,
            "whole_crowd": crowd,
            "not_measured": dict(cpu.unknown),
            "locust_cpu_warnings": len(warnings),
        },
        "bottleneck": call,
    }
