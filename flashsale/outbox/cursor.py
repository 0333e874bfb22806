"""Reading the outbox in commit-safe order: the pull API's cursor, and the relay's intake.

Rows get their ``id`` when inserted but become visible when their transaction commits, and
concurrent transactions commit in any order: a reader going by ``id`` alone would pass over a
row numbered 7 that commits just after it read row 8, for ever. So rows are read in
``(txid, id)`` order and only those whose transaction is older than every transaction still
running (``txid < pg_snapshot_xmin(pg_current_snapshot())``): no row can appear behind a
cursor later. The price is a little delay: a row is held back while any transaction that began
before its own is still open.

A cursor is the ``(txid, id)`` of the last row read, given to clients as an opaque string.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

import asyncpg
import orjson

from flashsale.outbox.events import STORED_TEXT

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TEXT = re.compile(r"([0-9]{1,20})\.([0-9]{1,19})")
_XID8_MAX = 2**64 - 1
_BIGINT_MAX = 2**63 - 1

# rows after a (txid, id) whose transaction is older than every running one, in that order
VISIBLE_AFTER = f"""
SELECT id, txid::text AS txid, event_id, {STORED_TEXT.format("")} AS payload
FROM outbox
WHERE (txid, id) > ($1::text::xid8, $2::bigint)
  AND txid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY txid, id
LIMIT $3
"""


class CursorError(ValueError):
    """A cursor this service did not make."""


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A place in the outbox: after the row ``id`` of transaction ``txid``."""

    txid: int = 0
    id: int = 0

    def encode(self) -> str:
        raw = f"{self.txid}.{self.id}".encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def decode(cls, token: str) -> Cursor:
        if not _TOKEN.fullmatch(token):
            raise CursorError("not a cursor of this service")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise CursorError("not a cursor of this service") from None
        match = _TEXT.fullmatch(raw)
        if match is None or cls(int(match[1]), int(match[2])).encode() != token:
            raise CursorError("not a cursor of this service")
        txid, row_id = int(match[1]), int(match[2])
        if txid > _XID8_MAX or row_id > _BIGINT_MAX:
            raise CursorError("not a cursor of this service")
        return cls(txid, row_id)


@dataclass(frozen=True, slots=True)
class Event:
    """One outbox row as the pull API gives it."""

    cursor: Cursor
    event_id: str
    payload: str  # the JSON text of {"type", "timestamp", "data"}

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = orjson.loads(self.payload)
        return {"id": self.event_id, **body}


async def read_after(
    conn: asyncpg.Connection | asyncpg.Pool, after: Cursor, limit: int
) -> list[Event]:
    """Up to ``limit`` events after ``after``, in cursor order; none that could still be
    followed by an earlier one."""
    rows = await conn.fetch(VISIBLE_AFTER, str(after.txid), after.id, limit)
    return [Event(Cursor(int(r["txid"]), r["id"]), r["event_id"], r["payload"]) for r in rows]
