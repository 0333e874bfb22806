"""What the parts measure besides wall time: CPU seconds of processes, EVALSHA calls and time
inside Redis (INFO commandstats), Redis memory (INFO memory), latencies of calls made from many
tasks; and the pinning of a process's threads to cores."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from helper import cpu_seconds
from redis.asyncio import Redis

from flashsale import errors


def cpu_of(pids: Iterable[int]) -> float:
    """CPU seconds used by the processes (0 for those gone)."""
    return sum(cpu_seconds(pid) or 0.0 for pid in pids)


@dataclass
class CpuMeter:
    """CPU seconds used meanwhile by this process and by the server processes given."""

    servers: dict[str, list[int]]
    t0: float = 0.0
    own0: float = 0.0
    base: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    own: float = 0.0
    used: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> CpuMeter:
        self.t0 = time.perf_counter()
        self.own0 = time.process_time()
        self.base = {k: cpu_of(pids) for k, pids in self.servers.items()}
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.own = time.process_time() - self.own0
        self.used = {k: cpu_of(pids) - self.base[k] for k, pids in self.servers.items()}

    def line(self) -> str:
        parts = [f"this process {self.own:.1f} s ({100 * self.own / self.wall:.0f}% of core 0)"]
        for name, used in self.used.items():
            parts.append(f"{name} {used:.1f} s ({100 * used / self.wall:.0f}% of a core)")
        return "CPU used: " + ", ".join(parts)


async def reset_stats(redis: Redis) -> None:
    await redis.config_resetstat()


async def evalsha_stats(redis: Redis) -> tuple[int, float]:
    """(calls, microseconds inside Redis) of EVALSHA since the last reset."""
    stats = await redis.info("commandstats")
    entry = stats.get("cmdstat_evalsha") or {"calls": 0, "usec": 0}
    return int(entry["calls"]), float(entry["usec"])


async def used_memory(redis: Redis) -> tuple[int, int]:
    """(used_memory, used_memory_rss) of INFO memory."""
    info = await redis.info("memory")
    return int(info["used_memory"]), int(info["used_memory_rss"])


async def timed_calls(
    call: Callable[[str], Awaitable[str]], users: Iterable[str], tasks: int
) -> tuple[list[float], Counter[str]]:
    """``call(user)`` for each user, from ``tasks`` tasks taking the next user in turn; the
    latencies in seconds (unsorted) and a count of the answers: what ``call`` returned, or the
    name of the FlashsaleError it raised."""
    todo = iter(users)
    latencies: list[float] = []
    answers: Counter[str] = Counter()

    async def worker() -> None:
        for user in todo:
            t0 = time.perf_counter()
            try:
                answers[await call(user)] += 1
            except errors.FlashsaleError as exc:
                answers[type(exc).__name__] += 1
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return latencies, answers


def pin_threads(pid: int, cores: set[int]) -> None:
    """Every thread of process ``pid`` on ``cores``."""
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), cores)
