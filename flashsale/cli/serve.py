"""``flashsale serve``: the HTTP API in worker processes on one port, and the order writer in a
process of its own.

Every HTTP worker binds the same port with SO_REUSEPORT, so the kernel spreads connections over
them and a bigger machine uses all its cores (``--workers N``, one a core). The order writer
runs beside them in its own process, so carrying orders to PostgreSQL never takes CPU from the
requests of a sale (several writers are safe: see store/writer.py). When
FLASHSALE_WEBHOOK_URLS is set, the order events relay (outbox/relay.py) runs in processes of
its own too: FLASHSALE_RELAY_PROCESSES of them (one a core by default, up to four), sharing
the work an order at a time, so that a launch's backlog of events is delivered with every
core the sale leaves free. The parent only supervises: a process that dies is started again,
and SIGTERM or SIGINT is passed on for a clean shutdown. Children stop by themselves if the
parent is killed outright.

``--single-process`` runs everything (HTTP, writer, sweeper) in one process instead; no relay
(run ``flashsale relay`` beside it).

Every child keeps its metrics in a directory the parent empties first (metrics/multiprocess.py),
so that /metrics of any worker shows all of them added up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.process import BaseProcess
from types import FrameType

from flashsale.metrics import multiprocess
from flashsale.settings import Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve_one(
    settings: Settings, host: str, port: int, reuse_port: bool = False, verbose: bool = False
) -> None:
    from flashsale.http.app import create_app
    from flashsale.http.runner import run_app
    from flashsale.logs import setup_logging

    setup_logging(verbose)  # a spawned worker starts with no logging set up
    run_app(
        create_app(settings),
        host=host,
        port=port,
        loop=new_event_loop(),
        reuse_port=reuse_port,
        # from the connection's start too: a client dribbling headers is cut off by then
        keepalive_timeout=settings.keepalive_timeout_s,
    )


def _http_worker(settings: Settings, host: str, port: int, parent: int, verbose: bool) -> None:
    _die_with_parent(parent)
    serve_one(settings, host, port, reuse_port=True, verbose=verbose)


def _writer_process(settings: Settings, consumer: str, parent: int, verbose: bool) -> None:
    from flashsale.cli.writer import run_writer
    from flashsale.logs import setup_logging

    _die_with_parent(parent)
    setup_logging(verbose)
    loop = new_event_loop()
    main = loop.create_task(run_writer(settings, consumer=consumer))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, main.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(main)
    loop.close()


def _relay_process(settings: Settings, parent: int, verbose: bool) -> None:
    from flashsale.cli.relay import run_relay
    from flashsale.logs import setup_logging

    _die_with_parent(parent)
    setup_logging(verbose)
    loop = new_event_loop()
    main = loop.create_task(run_relay(settings))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, main.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(main)
    loop.close()


def _die_with_parent(parent: int) -> None:
    """SIGTERM this child when the supervisor dies, even by SIGKILL: an orphaned worker would
    hold the port, and an orphaned writer would compete with the next one for nothing."""
    with contextlib.suppress(OSError, AttributeError):  # Linux only; elsewhere best effort
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def serve_supervised(
    settings: Settings, host: str, port: int, workers: int, verbose: bool = False
) -> int:
    """Run ``workers`` HTTP processes on one port, and the order writer (unless
    FLASHSALE_RUN_WRITER is off) and the order events relay (FLASHSALE_RELAY_PROCESSES of
    them, when FLASHSALE_WEBHOOK_URLS is set) in processes of their own, until SIGTERM or
    SIGINT."""
    # before any child starts: each imports the metrics library with the directory set
    metrics_dir = multiprocess.prepare() if settings.metrics else None
    try:
        return _supervise(settings, host, port, workers, verbose, metrics_dir)
    finally:
        if metrics_dir is not None:
            multiprocess.remove(metrics_dir)


def _supervise(
    settings: Settings,
    host: str,
    port: int,
    workers: int,
    verbose: bool,
    metrics_dir: multiprocess.MetricsDirectory | None,
) -> int:
    # spawn, not fork: each child starts clean, with no loop or connection of the parent's.
    # The settings are resolved once here, so every child has the same secrets.
    context = multiprocessing.get_context("spawn")
    parent = os.getpid()
    http_settings = replace(settings, run_writer=False)
    # a stable name: a restarted writer re-reads the entries its predecessor left unacknowledged
    consumer = f"{socket.gethostname()}-serve-{port}-writer"
    starters: list[Callable[[], BaseProcess]] = [
        lambda: context.Process(target=_http_worker, name="flashsale-worker",
                                args=(http_settings, host, port, parent, verbose))
    ] * workers  # fmt: skip
    if settings.run_writer:
        starters.append(
            lambda: context.Process(target=_writer_process, name="flashsale-writer",
                                    args=(settings, consumer, parent, verbose))
        )  # fmt: skip
    if settings.webhook_urls:
        starters += [
            lambda: context.Process(target=_relay_process, name="flashsale-relay",
                                    args=(settings, parent, verbose))
        ] * settings.relay_processes  # fmt: skip
    stopping = False

    def start(i: int) -> BaseProcess:
        process = starters[i]()
        process.start()
        return process

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in running[:workers]:  # the writer last: it carries the last orders
            if process.is_alive() and process.pid is not None:
                process.terminate()

    if metrics_dir is not None:
        kinds = (
            ["worker"] + ["writer"] * settings.run_writer + ["relay"] * bool(settings.webhook_urls)
        )
        multiprocess.started(kinds)
    running = [start(i) for i in range(len(starters))]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    relays = settings.relay_processes if settings.webhook_urls else 0
    log.info("serving on %s:%d with %d worker(s)%s%s", host, port, workers,
             " and an order writer" if settings.run_writer else "",
             f" and an order events relay ({relays} process(es))" if relays else "")  # fmt: skip
    while not stopping:
        for i, process in enumerate(running):
            if not process.is_alive() and not stopping:
                log.error("%s %s ended (exit %s); starting another", process.name, process.pid,
                          process.exitcode)  # fmt: skip
                if metrics_dir is not None:
                    kind = process.name.removeprefix("flashsale-")
                    multiprocess.process_ended(metrics_dir, process.pid, kind)
                time.sleep(settings.restart_delay_s)
                if not stopping:
                    running[i] = start(i)
        time.sleep(0.2)
    _stop_all(running[:workers])
    _stop_all(running[workers:])
    return 0


def _stop_all(processes: list[BaseProcess]) -> None:
    for process in processes:  # one started as the signal came has not been told yet
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():  # it would hold the port: no orphans
            log.error("%s %s did not stop in 30 s; killing it", process.name, process.pid)
            process.kill()
            process.join()
