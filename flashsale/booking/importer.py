"""Import a channel partner's booking list: Redis gives the numbers, PostgreSQL keeps them.
The list is read by :func:`flashsale.csv_input.read_user_ids`, as the F-code tools read theirs.

Each batch is booked in Redis by one atomic script (a shopper already booked keeps their
number, so an import can be repeated after any failure), then written to PostgreSQL with COPY
and an idempotent insert. Redis books batch n+1 while PostgreSQL writes batch n.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import asyncpg

from flashsale.engine.bookings import Bookings
from flashsale.engine.engine import now_ms
from flashsale.store.bookings import copy_imported

DEFAULT_BATCH = 5000


@dataclass(slots=True)
class ImportReport:
    total: int = 0  # user ids read
    new: int = 0  # booked now
    existing: int = 0  # booked before (by this list, an earlier import, or online)
    refused_full: int = 0  # not booked: the booking capacity was reached
    first_new_no: int | None = None
    last_new_no: int | None = None


def _batches(users: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for user in users:
        batch.append(user)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


async def import_bookings(
    bookings: Bookings,
    pool: asyncpg.Pool,
    sale_id: str,
    users: Iterable[str],
    *,
    batch_size: int = DEFAULT_BATCH,
    on_batch: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    report = ImportReport()
    written: asyncio.Queue[tuple[list[int], list[str]] | None] = asyncio.Queue(maxsize=2)

    async def write_to_postgres() -> None:
        while (item := await written.get()) is not None:
            await copy_imported(pool, sale_id, item[0], item[1], now_ms())

    writer = asyncio.create_task(write_to_postgres())
    try:
        for batch in _batches(users, batch_size):
            if writer.done():
                break  # it failed: its error is raised below
            result = await bookings.book_many(sale_id, batch)
            report.total += len(batch)
            report.new += result.new
            refused = result.numbers.count(0)
            report.refused_full += refused
            report.existing += len(batch) - result.new - refused
            if result.new:
                # new numbers are the batch's highest, handed out in list order
                last = max(result.numbers)
                report.last_new_no = last
                if report.first_new_no is None:
                    report.first_new_no = last - result.new + 1
            handed = asyncio.ensure_future(written.put((result.numbers, batch)))
            await asyncio.wait({handed, writer}, return_when=asyncio.FIRST_COMPLETED)
            if not handed.done():  # the writer failed: its error is raised below
                handed.cancel()
                break
            if on_batch is not None:
                on_batch(report)
    finally:
        if not writer.done():
            await written.put(None)
        await writer  # re-raises a PostgreSQL failure
    return report
