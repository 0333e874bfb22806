"""Requests aiohttp's HTTP parser refuses, answered and logged like every other error.

A request the parser cannot read (a header line over the limit, a control character in a
header, an unknown method, a broken chunked body...) never reaches the app, so the error
middleware never sees it. aiohttp answers it in ``RequestHandler.handle_error``: a text/plain
400 quoting the offending bytes, logged at ERROR with a traceback that quotes them again. Those
bytes are often an ``Authorization`` header: an admin token or a shopper's token would end up in
the log and in any proxy that keeps answers.

aiohttp has no setting or signal for this answer (aio-libs/aiohttp#3287: middlewares and
``on_response_prepare`` never see it), so :class:`RequestHandler` overrides ``handle_error``,
the public method of aiohttp's protocol class that aiohttp itself calls for it. Other ways were
worse: patching aiohttp's class would change every aiohttp server in the process, and a custom
logger (a ``handler_args`` setting) could quiet the log but not change the answer. The answer is
our JSON error, built by the middleware's own ``answer_error``, in our words, without the
request's bytes; the connection is closed; and the log gets one short line (at most one a
second, with a count of those held back, so a flood of garbage cannot flood the log).
runner.py makes aiohttp's server use this class, under ``flashsale serve`` and in the tests.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    ContentLengthError,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    TransferEncodingError,
)

from flashsale.errors import FlashsaleError, HeadersTooLarge, InvalidRequest
from flashsale.http.middlewares import answer_error

log = logging.getLogger(__name__)

# what each refusal says, in our words: never the parser's message, which quotes the request
_MESSAGES: tuple[tuple[type[HttpProcessingError], str], ...] = (
    (BadHttpMethod, "the request method is not valid"),
    (BadStatusLine, "the request line is not valid HTTP"),
    (InvalidURLError, "the request target is not a valid URL"),
    (InvalidHeader, "a request header is not valid"),
    (TransferEncodingError, "the chunked body is malformed"),
    (ContentLengthError, "the body is shorter than its Content-Length"),
)
_DEFAULT_MESSAGE = "the request is not valid HTTP (its request line, a header or its framing)"


class MalformedRequestLog:
    """One short line per malformed request, at most one every ``interval_s``; the lines held
    back are counted in the next one written."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self._interval_s = interval_s
        self._next_s = 0.0
        self._held_back = 0

    def note(self, remote: str | None, exc: BaseException) -> None:
        now = time.monotonic()
        if now < self._next_s:
            self._held_back += 1
            return
        self._next_s = now + self._interval_s
        held_back, self._held_back = self._held_back, 0
        # the class name only: the exception's text quotes the request
        what = type(exc).__name__
        if held_back:
            log.warning("malformed HTTP request from %s: %s (and %d more not logged)",
                        remote, what, held_back)  # fmt: skip
        else:
            log.warning("malformed HTTP request from %s: %s", remote, what)


class RequestHandler(web.RequestHandler):
    """aiohttp's protocol, answering what its parser refuses with our JSON errors."""

    __slots__ = ("_malformed",)

    def __init__(
        self, manager: web.Server, *, malformed: MalformedRequestLog, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._malformed = malformed

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The answer to a request that failed outside the app: refused by the parser, or an
        error past the error middleware. Like aiohttp's, it closes the connection."""
        if isinstance(exc, HttpProcessingError):
            self._malformed.note(request.remote, exc)
            error = self._parser_error(exc)
        else:  # not the client's doing: ours, and worth a traceback
            log.error("answering %s from %s failed", status, request.remote, exc_info=exc)
            error = FlashsaleError()
        if request.writer.output_size > 0:  # as aiohttp does: an answer has begun, too late
            raise ConnectionError("a response was sent already; cannot send the error")
        response = answer_error(error)
        response.force_close()
        return response

    def _parser_error(self, exc: HttpProcessingError) -> FlashsaleError:
        if isinstance(exc, LineTooLong):
            # LineTooLong carries the limit it hit; create_app makes the request line's
            # (max_line_size) differ from a header field's (max_field_size)
            limit = exc.args[1] if len(exc.args) > 1 else None
            if limit == self.max_line_size and limit != self.max_field_size:
                return InvalidRequest(f"the request line is longer than {limit:d} bytes")
            return HeadersTooLarge(f"a request header may hold at most {self.max_field_size} bytes")
        for kind, text in _MESSAGES:
            if isinstance(exc, kind):
                return InvalidRequest(text)
        return InvalidRequest(_DEFAULT_MESSAGE)
