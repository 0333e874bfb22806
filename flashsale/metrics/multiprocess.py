"""Multiprocess mode for ``flashsale serve``: every child writes its metrics to memory-mapped
files in one directory, and a scrape of any HTTP worker adds up all of them (prometheus-client's
``MultiProcessCollector``).

The library decides when it is imported whether values go to files, by whether
``PROMETHEUS_MULTIPROC_DIR`` is set, so serve's parent sets it before it starts any child (each
child, spawned, imports the library afresh with it). The directory must start empty: one left
by an earlier run would add that run's counts to this one's. Unless the operator names one, it
is a fresh temporary directory per run, removed at the end (and, should serve be killed
outright, by the next serve on the machine: the directory's name holds serve's pid). When a
child dies its counters stay (a total never goes back), and ``mark_process_dead`` drops its
live gauges (its pool).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "flashsale-metrics-"


@dataclass(frozen=True, slots=True)
class MetricsDirectory:
    path: str
    owned: bool  # made here, and removed by :func:`remove`


def prepare() -> MetricsDirectory:
    """An empty directory for the metrics files, named in this process's environment (and so
    in every child started after). Call it before this process imports prometheus-client."""
    given = os.environ.get(ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        # only what prometheus-client writes: the directory may be shared with other files
        for leftover in glob.glob(os.path.join(given, "*.db")):
            os.remove(leftover)
        return MetricsDirectory(given, owned=False)
    _remove_abandoned()
    path = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
    os.environ[ENV] = path
    return MetricsDirectory(path, owned=True)


def _remove_abandoned() -> None:
    """The temporary directories of serve processes that no longer run (killed outright)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{_PREFIX}*-*")):
        pid = os.path.basename(path).removeprefix(_PREFIX).partition("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # gone: its directory is nobody's
            log.info("removing %s, left by a serve that was stopped outright", path)
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # alive under another user
            continue


def started(kinds: list[str]) -> None:
    """Show the restart counts of these kinds of process from the start, at 0."""
    from flashsale.metrics import registry

    for kind in kinds:
        registry.SERVE_RESTARTS.labels(kind).inc(0)


def process_ended(directory: MetricsDirectory, pid: int | None, kind: str) -> None:
    """A child ended and is about to be started again: its live gauges go, the restart is
    counted."""
    from prometheus_client import multiprocess

    from flashsale.metrics import registry

    if pid is not None:
        multiprocess.mark_process_dead(pid, directory.path)  # type: ignore[no-untyped-call]
    registry.SERVE_RESTARTS.labels(kind).inc()


def remove(directory: MetricsDirectory) -> None:
    if directory.owned:
        shutil.rmtree(directory.path, ignore_errors=True)
