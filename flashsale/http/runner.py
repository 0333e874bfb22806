"""Serving the app: aiohttp's runner, with the protocol class of bad_requests.py.

aiohttp picks its protocol class in one place, ``web.Server.__call__`` (the protocol factory the
listening socket calls for each connection), and offers no setting for it. So :class:`AppRunner`
builds aiohttp's server as usual (the app started, ``handler_args`` applied) and hands its
settings to :class:`_Server`, which differs only in the class it makes. Both ``flashsale serve``
(:func:`run_app`) and the tests' server (tests/helpers.py) serve through :class:`AppRunner`.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from flashsale.http.bad_requests import MalformedRequestLog, RequestHandler

# Connections waiting to be accepted, per process (the kernel caps it at net.core.somaxconn).
# aiohttp's default of 128 overflows when a launch's crowd connects at once, as every holder of
# an opening ticket does at the window's draw (Retry-After points them all to that second): the
# connections beyond it were reset, their buys failed with the connection closed.
LISTEN_BACKLOG = 4096


class _Server(web.Server):
    """aiohttp's server, making flashsale's :class:`RequestHandler` for each connection."""

    def __init__(self, made: web.Server) -> None:
        # The same handler, request factory and protocol settings as aiohttp's own server.
        # ``_loop`` and ``_kwargs`` are what aiohttp's own ``__call__`` reads: were they renamed,
        # every connection of every test would fail at once, not quietly lose a setting.
        super().__init__(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )
        self._malformed = MalformedRequestLog()

    def __call__(self) -> RequestHandler:
        return RequestHandler(self, loop=self._loop, malformed=self._malformed, **self._kwargs)


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer parser errors as bad_requests.py says."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        return _Server(await super()._make_server())


def run_app(
    app: web.Application,
    *,
    host: str,
    port: int,
    loop: asyncio.AbstractEventLoop,
    reuse_port: bool = False,
    keepalive_timeout: float = 75.0,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, and close ``loop``: ``web.run_app`` through
    :class:`AppRunner`, with the same shutdown (the app's cleanup first, then every other task
    cancelled)."""

    async def serve() -> None:
        runner = AppRunner(
            app, handle_signals=True, access_log=None, keepalive_timeout=keepalive_timeout
        )
        await runner.setup()
        try:
            site = web.TCPSite(
                runner, host, port, backlog=LISTEN_BACKLOG, reuse_port=reuse_port or None
            )
            await site.start()
            await asyncio.Event().wait()  # until a signal raises GracefulExit
        finally:
            await runner.cleanup()

    main = loop.create_task(serve())
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left and wait for it, as ``asyncio.run`` does on its way out."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )
