"""Bookings in PostgreSQL: the durable list, written from the events stream and by imports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from flashsale.models import ms_to_datetime


@dataclass(frozen=True, slots=True)
class BookingRow:
    sale_id: str
    booking_no: int
    user_id: str
    booked_ms: int
    source: str = "web"

    @classmethod
    def from_event(cls, sale_id: str, fields: Mapping[str, str]) -> BookingRow:
        return cls(
            sale_id=sale_id, booking_no=int(fields["booking_no"]), user_id=fields["user"],
            booked_ms=int(fields["booked_ms"]),
        )  # fmt: skip


# A replayed event changes nothing. An import that listed a shopper who had booked online
# may have stored their booking first (with its own time and source): the online booking's
# event is the authority on both, so it corrects that row.
# New rows are counted into sales.bookings_stored in the same statement ("xmax = 0" tells an
# inserted row from an updated one).
_INSERT = """
WITH written AS (
    INSERT INTO bookings (sale_id, booking_no, user_id, booked_at, source)
    SELECT s, n, u, to_timestamp(b / 1000.0), src
    FROM unnest($1::text[], $2::int[], $3::text[], $4::bigint[], $5::text[]) AS t(s, n, u, b, src)
    ON CONFLICT (sale_id, booking_no) DO UPDATE
    SET booked_at = EXCLUDED.booked_at, source = EXCLUDED.source
    WHERE bookings.user_id = EXCLUDED.user_id AND bookings.source <> EXCLUDED.source
    RETURNING sale_id, (xmax = 0) AS inserted
)
UPDATE sales SET bookings_stored = bookings_stored + c.n
FROM (SELECT sale_id, count(*) FILTER (WHERE inserted) AS n FROM written GROUP BY sale_id) c
WHERE sales.sale_id = c.sale_id AND c.n > 0
"""


async def insert_bookings(
    conn: asyncpg.Connection | asyncpg.Pool, rows: Sequence[BookingRow]
) -> None:
    if not rows:
        return
    await conn.execute(
        _INSERT,
        [r.sale_id for r in rows], [r.booking_no for r in rows], [r.user_id for r in rows],
        [r.booked_ms for r in rows], [r.source for r in rows],
    )  # fmt: skip


async def copy_imported(
    pool: asyncpg.Pool, sale_id: str, numbers: Sequence[int], user_ids: Sequence[str],
    booked_ms: int,
) -> None:  # fmt: skip
    """Write a batch of imported bookings (numbers 0, refused for capacity, are skipped) with
    COPY into a temporary table and one idempotent insert: several times faster than rows."""
    booked_at = ms_to_datetime(booked_ms)
    records = [(no, user, booked_at) for no, user in zip(numbers, user_ids, strict=True) if no > 0]
    if not records:
        return
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS booking_import "
            "(booking_no integer, user_id text, booked_at timestamptz) ON COMMIT DELETE ROWS"
        )
        await conn.copy_records_to_table("booking_import", records=records)
        await conn.execute(
            "WITH written AS ("
            " INSERT INTO bookings (sale_id, booking_no, user_id, booked_at, source)"
            " SELECT $1, booking_no, user_id, booked_at, 'import' FROM booking_import"
            " ON CONFLICT DO NOTHING RETURNING 1) "
            "UPDATE sales SET bookings_stored = bookings_stored + (SELECT count(*) FROM written) "
            "WHERE sale_id = $1",
            sale_id,
        )


async def count_bookings(conn: asyncpg.Connection | asyncpg.Pool, sale_id: str) -> int:
    """Bookings of the sale in PostgreSQL (a kept count: no scan of the table)."""
    n = await conn.fetchval("SELECT bookings_stored FROM sales WHERE sale_id = $1", sale_id)
    return int(n or 0)
