"""A per-process memory of sold-out sales, so the crowd after the last unit costs no Redis call.

A verdict is trusted for ``recheck_s`` only: after that the next buy asks Redis again, so units
that come back (expiry, cancellation) are sold again within that time. Units returned by this
process clear the verdict at once.
"""

from __future__ import annotations

import time


class SoldOutGate:
    def __init__(self, recheck_s: float) -> None:
        self._recheck_s = recheck_s
        self._until: dict[str, float] = {}

    def is_sold_out(self, sale_id: str) -> bool:
        until = self._until.get(sale_id)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._until[sale_id]
        return False

    def mark(self, sale_id: str) -> None:
        self._until[sale_id] = time.monotonic() + self._recheck_s

    def clear(self, sale_id: str) -> None:
        self._until.pop(sale_id, None)
