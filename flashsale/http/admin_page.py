"""``GET /admin``: the live sale page an operator keeps open during a launch.

Three static files of ``flashsale/http/static/`` (no build step): the page, its one script and
its style sheet. They hold no data and are served to anyone; the script asks the admin JSON
routes and ``GET /metrics`` for everything it shows, with the admin token the operator typed
(kept in the tab's ``sessionStorage``, sent as ``Authorization: Bearer``, never in a cookie or
a URL, so there is nothing for another site to ride on). Not part of the shopper API's OpenAPI
description.
"""

from __future__ import annotations

import functools
from importlib import resources

from aiohttp import web

# the page's own files, and nothing else: a name is looked up here, never on the disk
_ASSETS = {
    "admin.js": "text/javascript",
    "admin.css": "text/css",
}
_PAGE = "admin.html"

# Scripts, styles and requests from this origin only: no inline script or style (the script
# sets widths through the DOM, which the policy allows), no plug-ins, no framing of the page
# (its buttons pause and close sales), and a form that cannot be submitted anywhere, so that
# the token never leaves in a URL even if the script failed to load.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    "object-src 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # small files: always asked again, so a new release's page never runs an old script
    "Cache-Control": "no-cache",
}


@functools.cache
def _read(name: str) -> bytes:
    return resources.files("flashsale.http").joinpath("static", name).read_bytes()


def _file(name: str, content_type: str) -> web.Response:
    response = web.Response(body=_read(name), content_type=content_type, charset="utf-8")
    response.headers.update(_HEADERS)
    return response


async def page(request: web.Request) -> web.Response:
    """``GET /admin``: the page."""
    return _file(_PAGE, "text/html")


async def asset(request: web.Request) -> web.Response:
    """``GET /admin/{asset}``: the page's script or style sheet."""
    name = request.match_info["asset"]
    content_type = _ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return _file(name, content_type)


async def to_page(request: web.Request) -> web.Response:
    """``GET /admin/``: the page is ``/admin`` (its links are relative to it)."""
    raise web.HTTPFound("../admin")
