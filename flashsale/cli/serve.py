"""``flashsale serve``: the HTTP API in one process, or in N worker processes on one port.

With ``--workers N`` every worker binds the same port with SO_REUSEPORT, so the kernel spreads
connections over them and a bigger machine uses all its cores. Each worker is a whole service
(the writer and the sweeper too: several of each are safe, see store/writer.py and
engine/sweeper.py). The parent only supervises: a worker that dies is started again, and
SIGTERM or SIGINT is passed on to every worker for a clean shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from flashsale.settings import Settings

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve_one(
    settings: Settings, host: str, port: int, reuse_port: bool = False, verbose: bool = False
) -> None:
    from aiohttp import web

    from flashsale.http.app import create_app
    from flashsale.logs import setup_logging

    setup_logging(verbose)  # a spawned worker starts with no logging set up
    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        loop=new_event_loop(),
        access_log=None,
        print=lambda *_: None,
        reuse_port=reuse_port or None,
    )


def serve_workers(
    settings: Settings, host: str, port: int, workers: int, verbose: bool = False
) -> int:
    """Run ``workers`` processes of the service on one port until SIGTERM or SIGINT."""
    # spawn, not fork: each worker starts clean, with no loop or connection of the parent's.
    # The settings are resolved once here, so every worker has the same secrets.
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> BaseProcess:
        process = context.Process(
            target=serve_one, args=(settings, host, port, True, verbose), name="flashsale-worker"
        )
        process.start()
        return process

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in running:
            if process.is_alive() and process.pid is not None:
                process.terminate()

    running = [start() for _ in range(workers)]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving on %s:%d with %d workers", host, port, workers)
    while not stopping:
        for i, process in enumerate(running):
            if not process.is_alive() and not stopping:
                log.error("worker %s ended (exit %s); starting another", process.pid,
                          process.exitcode)  # fmt: skip
                time.sleep(RESTART_DELAY_S)
                if not stopping:
                    running[i] = start()
        time.sleep(0.2)
    for process in running:  # a worker started as the signal came has not been told yet
        if process.is_alive():
            process.terminate()
    for process in running:
        process.join(timeout=30)
        if process.is_alive():  # it would hold the port: no orphans
            log.error("worker %s did not stop in 30 s; killing it", process.pid)
            process.kill()
            process.join()
    return 0
