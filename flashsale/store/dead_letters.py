"""Dead letters: order and booking events PostgreSQL will never take, set aside so the rest flow.

The order writer retries a batch for as long as a store is away: a connection error heals by
itself. But an event that PostgreSQL refuses for what it holds (a value it cannot store, a
constraint it breaks) or that cannot even be read would fail the same way for ever, and since
the writer goes in stream order, nothing behind it, of any sale, would reach PostgreSQL. Such
an event is moved to its sale's dead-letter stream (``<p>:{<sale>}:deadletters``) with the
reason, in one transaction with its removal from the events stream, logged once, and the
writer goes on. ``flashsale deadletters SALE_ID`` lists them and ``--retry`` puts them back
once the cause is fixed; the stats and ``flashsale reconcile`` count them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import asyncpg
from redis.asyncio import Redis

from flashsale.engine.keys import WRITER_GROUP, SaleKeys

log = logging.getLogger(__name__)

# Refusals that retrying cannot cure. PostgreSQL's classes 22 (data exception: a NUL byte, a
# number out of range) and 23 (integrity constraint violation); asyncpg's own refusal to encode
# an argument is a ValueError, like the errors of reading a malformed event.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    ValueError,
    KeyError,
    TypeError,
)

# the fields a dead letter adds to the event's own (which it keeps as they were)
_PREFIX = "dead_"
_MAX_REASON_CHARS = 500


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event set aside: where it was, why, and what it said."""

    letter_id: str  # its id in the dead-letter stream
    event_id: str  # its id in the events stream it came from
    reason: str
    failed_ms: int
    fields: dict[str, str]

    def to_json(self) -> dict[str, object]:
        return {
            "letter_id": self.letter_id,
            "event_id": self.event_id,
            "reason": self.reason,
            "failed_ms": self.failed_ms,
            "event": self.fields,
        }


def describe(exc: BaseException) -> str:
    """The reason kept with a dead letter: the error's kind and its message, shortened."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 1] + "…"


async def set_aside(
    redis: Redis,
    keys: SaleKeys,
    letters: Sequence[tuple[str, dict[str, str], str]],
    now_ms: int,
) -> None:
    """Move events ``(event id, fields, reason)`` of one sale to its dead-letter stream.

    One MULTI per sale (its keys share one hash slot): a crash leaves each event either still
    in the events stream, to be judged again, or in the dead-letter stream, never both."""
    async with redis.pipeline(transaction=True) as pipe:
        for event_id, fields, reason in letters:
            letter = {
                **fields,
                f"{_PREFIX}event_id": event_id,
                f"{_PREFIX}reason": reason,
                f"{_PREFIX}failed_ms": now_ms,
            }
            _ = pipe.xadd(keys.dead_letters, letter)  # type: ignore[arg-type]
        ids = [event_id for event_id, _, _ in letters]
        _ = pipe.xack(keys.events, WRITER_GROUP, *ids)
        _ = pipe.xdel(keys.events, *ids)
        await pipe.execute()
    for event_id, fields, reason in letters:
        what = fields.get("order_id") or f"booking {fields.get('booking_no', '?')}"
        log.error(
            "order writer: event %s (%s) of sale %s set aside as a dead letter: %s",
            event_id, what, keys.sale_id, reason,
        )  # fmt: skip


async def count(redis: Redis, keys: SaleKeys) -> int:
    return int(await redis.xlen(keys.dead_letters))


async def read(redis: Redis, keys: SaleKeys, limit: int | None = None) -> list[DeadLetter]:
    """The sale's dead letters, oldest first."""
    entries = cast(
        list[tuple[str, dict[str, str]]],
        await redis.xrange(keys.dead_letters, count=limit),
    )
    letters = []
    for letter_id, raw in entries:
        fields = {k: v for k, v in raw.items() if not k.startswith(_PREFIX)}
        letters.append(
            DeadLetter(
                letter_id=letter_id,
                event_id=raw.get(f"{_PREFIX}event_id", ""),
                reason=raw.get(f"{_PREFIX}reason", ""),
                failed_ms=int(raw.get(f"{_PREFIX}failed_ms") or 0),
                fields=fields,
            )
        )
    return letters


async def retry(redis: Redis, keys: SaleKeys, letters: Sequence[DeadLetter]) -> int:
    """Put dead letters back into the events stream (once their cause is fixed), each in one
    transaction with its removal. An event still refused comes back as a new dead letter."""
    for letter in letters:
        async with redis.pipeline(transaction=True) as pipe:
            _ = pipe.xadd(keys.events, letter.fields)  # type: ignore[arg-type]
            _ = pipe.xdel(keys.dead_letters, letter.letter_id)
            await pipe.execute()
    return len(letters)
