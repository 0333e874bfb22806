"""Named points where a process can be made to die on purpose, to prove crash safety.

``FLASHSALE_FAILPOINTS="writer.after_commit=kill"`` makes the process SIGKILL itself the first
time it reaches that point. Unset (the normal case), a failpoint costs one dict lookup.
"""

from __future__ import annotations

import os
import signal


def _parse(raw: str) -> dict[str, str]:
    points = {}
    for item in raw.split(","):
        name, _, action = item.strip().partition("=")
        if name:
            points[name] = action or "kill"
    return points


_ARMED = _parse(os.environ.get("FLASHSALE_FAILPOINTS", ""))


def failpoint(name: str) -> None:
    action = _ARMED.get(name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
