"""flashsale: a flash-sale and F-code queueing engine.

The hot path lives in Redis (one atomic Lua script per operation, see ``flashsale.engine``);
confirmed orders flow to PostgreSQL (``flashsale.store``); the HTTP face is an aiohttp
application (``flashsale.http``); operators and scripts use the CLI (``flashsale.cli``).
"""

__version__ = "0.2.0"
