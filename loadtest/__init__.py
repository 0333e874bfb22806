"""The launch-day rehearsal: a Locust crowd against a running flashsale service, and the driver
(``python -m loadtest.rehearsal``, wrapped by ``scripts/launch-rehearsal``) that sets up a sale,
runs the crowd and judges the result.

The Locust side (locustfile.py, crowd_users.py, pools.py, records.py, watcher.py, checks.py,
plan.py) runs under gevent and imports nothing asynchronous; the driver side
(rehearsal/) is plain Python and talks to Redis and PostgreSQL directly for the verdict.
"""
