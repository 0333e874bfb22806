"""Counting on the hot path: plain ints and lists in this process, nothing else.

A request adds one to a dict entry, one to a histogram bucket and a float to a sum; a Redis
batch does the same. The publisher (publish.py) moves what was counted into the Prometheus
metrics about once a second (and just before a scrape), one ``inc`` per series that moved
instead of one per request: in multiprocess mode every ``inc`` is a write to a memory-mapped
file, and three of them per buy would cost about 5% of the buy (see BENCHMARKS.md).

Everything here is touched by one event loop thread only, so no lock is needed: the
publisher swaps each container for an empty one and publishes the old.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Upper bounds (seconds) of the request duration buckets, +Inf last. A buy takes a
# millisecond or two when the box is quiet and tens of milliseconds under a launch crowd.
REQUEST_BOUNDS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    float("inf"),
)  # fmt: skip

# Upper bounds (seconds) of a Redis batch's round trip: sub-millisecond when all is well.
REDIS_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    float("inf"),
)  # fmt: skip

# The methods a request is counted under; anything else (a client may send any token) is
# "other", so that no client can make up label values.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# the route of a request no route matched (404, 405)
UNMATCHED = "unmatched"

BUY_ROUTE = "/v1/sales/{sale_id}/buy"


class Observations:
    """Observations of one histogram series: per-bucket counts (not cumulative) and the sum."""

    __slots__ = ("bounds", "buckets", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * len(bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. Prometheus's "le"
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.total += value

    def take(self) -> tuple[list[int], float]:
        """What was observed since the last take, and start again from nothing."""
        taken = self.buckets, self.total
        self.buckets, self.total = [0] * len(self.bounds), 0.0
        return taken


class RouteTally:
    """The requests of one route (method and path template)."""

    __slots__ = ("buy", "duration", "method", "route", "statuses")

    def __init__(self, method: str, route: str) -> None:
        self.method = method
        self.route = route
        self.buy = route == BUY_ROUTE and method == "POST"
        self.statuses: dict[int, int] = {}
        self.duration = Observations(REQUEST_BOUNDS)


class Tally:
    """This process's counts since they were last published."""

    def __init__(self) -> None:
        # by aiohttp route object (a dict lookup per request); several objects (apps) may
        # share one RouteTally, by method and template
        self._by_route: dict[Any, RouteTally] = {}
        self.routes: dict[tuple[str, str], RouteTally] = {}
        self.buys: dict[str, int] = {}
        self.payments: dict[tuple[str, str], int] = {}
        self.redis_batches = Observations(REDIS_BOUNDS)
        self.redis_commands = 0
        self.redis_errors: dict[str, int] = {}

    def route_tally(self, route: Any, method: str) -> RouteTally:
        """The tally of an aiohttp route; found once per route object, then from a dict."""
        found = self._by_route.get(route)
        if found is not None:
            return found
        resource = getattr(route, "resource", None)
        if resource is None:  # no route matched: a new object each time, so never kept
            return self._named(method if method in _METHODS else "other", UNMATCHED)
        found = self._named(route.method if route.method in _METHODS else "other",
                            resource.canonical)  # fmt: skip
        self._by_route[route] = found
        return found

    def _named(self, method: str, route: str) -> RouteTally:
        found = self.routes.get((method, route))
        if found is None:
            found = self.routes[(method, route)] = RouteTally(method, route)
        return found

    def buy(self, outcome: str) -> None:
        self.buys[outcome] = self.buys.get(outcome, 0) + 1

    def payment(self, outcome: str, reason: str) -> None:
        key = (outcome, reason)
        self.payments[key] = self.payments.get(key, 0) + 1

    def redis_batch(self, seconds: float, commands: int, error: BaseException | None) -> None:
        """One batch of the hot path's Redis calls: its round trip, or how it failed."""
        self.redis_commands += commands
        if error is None:
            self.redis_batches.observe(seconds)
            return
        if isinstance(error, RedisTimeoutError | TimeoutError):
            kind = "timeout"
        elif isinstance(error, RedisConnectionError | OSError):
            kind = "connection"
        else:
            kind = "other"
        self.redis_errors[kind] = self.redis_errors.get(kind, 0) + 1


# This process's tally: the hot path counts into it, the publisher empties it.
TALLY = Tally()
