"""What one Locust process saw, written where the driver's verdict and report read it.

- ``orders-<tag>.jsonl``: every order answered 201 (and every payment answered 200 paid, and
  every order whose payment comes late), streamed as it happens, so a crashed process still
  leaves its orders behind;
- ``answers-<tag>.json``: how many of each answer per endpoint and role, the pools' use, and
  the accounts that sent a public buy, by role (for the units won per account);
- ``requests-<tag>.npz``: every request's start, latency, endpoint and failure flag, for the
  chart's time series (Locust's own history keeps percentiles over a 10 s window only).
"""

from __future__ import annotations

import json
import os
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import IO, Any

BUY = "POST /v1/sales/{id}/buy"
PAY = "POST /v1/payments/events"  # the payment service's notification that a winner paid
SALE = "GET /v1/sales/{id}"
BOOKING = "GET /v1/sales/{id}/bookings/me"
ENDPOINTS = (BUY, PAY, SALE, BOOKING)


class Recorder:
    def __init__(self, record_dir: str | Path, tag: str) -> None:
        self.dir = Path(record_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tag = tag
        self._orders: IO[str] | None = None  # opened on the first order (a master has none)
        self.answers: Counter[tuple[str, str, str]] = Counter()  # (endpoint, role, answer)
        self.problems: Counter[tuple[str, str]] = Counter()  # (endpoint, why it failed)
        # role -> the user ids that sent a public buy: ids, not a count, as a wrapping pool
        # may hand one shopper to two processes
        self.accounts: dict[str, set[str]] = {}
        self._start = array("d")  # epoch seconds
        self._ms = array("f")
        self._endpoint = array("B")
        self._failed = array("B")

    def order(self, event: str, order_id: str, user: str, lane: str, **more: Any) -> None:
        """``event``: "reserved" (a 201), "paid" (a payment answered 200 paid) or "late" (an
        order the payment service pays after its deadline, which the driver does: ``more``
        holds the order's ``amount_cents``, ``currency`` and ``expires_at``)."""
        line = {"t": time.time(), "event": event, "order_id": order_id, "user": user,
                "lane": lane, **more}  # fmt: skip
        if self._orders is None:
            self._orders = (self.dir / f"orders-{self.tag}.jsonl").open("a", buffering=1 << 16)
        self._orders.write(json.dumps(line) + "\n")

    def answer(self, endpoint: str, role: str, answer: str, problem: str | None) -> None:
        self.answers[(endpoint, role, answer)] += 1
        if problem is not None:
            self.problems[(endpoint, problem)] += 1

    def account(self, role: str, user: str) -> None:
        """``user`` (of ``role``: booked, walk-in, bot) sent a public buy."""
        self.accounts.setdefault(role, set()).add(user)

    def request(self, name: str, start_time: float, response_ms: float, failed: bool) -> None:
        try:
            endpoint = ENDPOINTS.index(name)
        except ValueError:
            return  # not one of the crowd's requests
        self._start.append(start_time)
        self._ms.append(response_ms)
        self._endpoint.append(endpoint)
        self._failed.append(failed)

    def flush(self, extra: dict[str, Any]) -> None:
        """Write everything so far (idempotent: called at test stop and again at quit)."""
        import numpy as np

        if self._orders is not None:
            self._orders.flush()
            os.fsync(self._orders.fileno())
        answers = [
            {"endpoint": e, "role": r, "answer": a, "count": n}
            for (e, r, a), n in sorted(self.answers.items())
        ]
        problems = [
            {"endpoint": e, "problem": p, "count": n} for (e, p), n in sorted(self.problems.items())
        ]
        accounts = {role: sorted(users) for role, users in self.accounts.items()}
        payload = {"tag": self.tag, "answers": answers, "problems": problems,
                   "accounts": accounts, **extra}  # fmt: skip
        (self.dir / f"answers-{self.tag}.json").write_text(json.dumps(payload, indent=1))
        np.savez(
            self.dir / f"requests-{self.tag}.npz",
            start=np.frombuffer(self._start, dtype=np.float64),
            ms=np.frombuffer(self._ms, dtype=np.float32),
            endpoint=np.frombuffer(self._endpoint, dtype=np.uint8),
            failed=np.frombuffer(self._failed, dtype=np.uint8),
        )
