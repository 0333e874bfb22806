"""The baseline of scripts/bench-buy and scripts/bench-bookings: a bare aiohttp + uvloop +
orjson app answering every request with {"ok": true}.

    .venv/bin/python scripts/bench/hello.py PORT
"""

import sys

import orjson
import uvloop
from aiohttp import web


async def hello(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps({"ok": True}), content_type="application/json")


def main(port: int) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        loop=uvloop.new_event_loop(),
        access_log=None,
        print=lambda *_: None,
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
