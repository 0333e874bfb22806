"""How the relay's search for eligible events fares when its receiver's row has many versions.

The receiver's row in ``webhook_receivers`` (its cursor) is updated at every intake. While any
transaction on the server holds back pruning, each read of that row walks every version of it
written since. This times the relay's search (``_CANDIDATES``, 200 orders) on a database a
launch left behind, before and after UPDATES updates of the row made under an open
transaction, and once that transaction has ended.

    scripts/launch-rehearsal --no-install --stock 100000 --bookers 1000000 --keep
    .venv/bin/python scripts/bench/relay_cursor_row.py DATABASE_URL [--updates N] [--events N]

``--events N`` first adds N events (the next sequence of N orders there) and takes them in, so
that the search has candidates whose predecessor it must check. The database is changed: use
a kept rehearsal's, and drop it after.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from flashsale.outbox import receivers, relay

_NEXT_EVENTS = """
INSERT INTO outbox (event_id, order_id, sale_id, sequence, type, body)
SELECT 'evt_bench_' || o.order_id || '_' || (o.v + 1), o.order_id, o.sale_id, o.v + 1,
       'order.paid', '{}'
FROM (SELECT order_id, max(sale_id) AS sale_id, max(sequence) AS v FROM outbox
      GROUP BY order_id ORDER BY order_id LIMIT $1) o
"""


async def search_ms(conn: asyncpg.Connection, url: str) -> tuple[int, float]:
    started = time.perf_counter()
    rows = await conn.fetch(relay._CANDIDATES, url, 60.0, 200, 800)
    elapsed = 1000 * (time.perf_counter() - started)
    await conn.execute("SELECT pg_advisory_unlock_all()")
    return len(rows), elapsed


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("database_url")
    p.add_argument("--updates", type=int, default=20_000)
    p.add_argument("--events", type=int, default=20_000)
    args = p.parse_args()
    conn = await asyncpg.connect(args.database_url)
    holder = await asyncpg.connect(args.database_url)
    try:
        url = await conn.fetchval("SELECT url FROM webhook_receivers LIMIT 1")
        if url is None:
            sys.exit("relay_cursor_row: no receiver in that database")
        if args.events:
            await conn.execute(_NEXT_EVENTS, args.events)
            while await receivers.intake(conn, url, 2000):
                pass
        found, ms = await search_ms(conn, url)
        print(f"before:           {found} orders found in {ms:.1f} ms")
        held = holder.transaction(isolation="repeatable_read")
        await held.start()
        await holder.fetchval("SELECT pg_current_xact_id()")  # holds back pruning
        for _ in range(args.updates):
            await conn.execute(
                "UPDATE webhook_receivers SET last_success_at = clock_timestamp() WHERE url = $1",
                url,
            )
        found, ms = await search_ms(conn, url)
        print(f"{args.updates:,} versions:  {found} orders found in {ms:.1f} ms (held open)")
        await held.rollback()
        found, ms = await search_ms(conn, url)
        print(f"after:            {found} orders found in {ms:.1f} ms (released)")
    finally:
        await holder.close()
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
