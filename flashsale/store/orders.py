"""Orders in PostgreSQL: one idempotent, order-independent batch upsert, and counts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import asyncpg

from flashsale.ids import sale_of_order


@dataclass(frozen=True, slots=True)
class OrderRow:
    """One state of an order, as carried by an order event."""

    order_id: str
    sale_id: str
    user_id: str
    quantity: int
    status: str
    version: int
    expires_ms: int
    created_ms: int
    updated_ms: int
    fcode: str = ""  # digest of the F-code used, "" for a public buy
    campaign: str = ""

    @classmethod
    def from_event(cls, fields: Mapping[str, str]) -> OrderRow:
        order_id = fields["order_id"]
        sale_id = sale_of_order(order_id)
        if sale_id is None:
            raise ValueError(f"order event with a foreign order id: {order_id!r}")
        return cls(
            order_id=order_id, sale_id=sale_id, user_id=fields["user"],
            quantity=int(fields["qty"]), status=fields["status"], version=int(fields["v"]),
            expires_ms=int(fields["expires_ms"]), created_ms=int(fields["created_ms"]),
            updated_ms=int(fields["updated_ms"]), fcode=fields.get("fcode", ""),
            campaign=fields.get("campaign", ""),
        )  # fmt: skip


# Newer versions win; equal or older ones change nothing, so a replayed batch is harmless.
_UPSERT = """
INSERT INTO orders (order_id, sale_id, user_id, quantity, status, version,
                    expires_at, created_at, updated_at, fcode, campaign)
SELECT o, s, u, q, st, v,
       to_timestamp(e / 1000.0), to_timestamp(c / 1000.0), to_timestamp(a / 1000.0),
       nullif(f, ''), nullif(cp, '')
FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::int[],
            $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::text[])
     AS t(o, s, u, q, st, v, e, c, a, f, cp)
ON CONFLICT (order_id) DO UPDATE
SET status = EXCLUDED.status, version = EXCLUDED.version, updated_at = EXCLUDED.updated_at
WHERE orders.version < EXCLUDED.version
"""


# A code follows its newest order event: reserved/paid -> redeemed by that order; released
# (expired/cancelled) -> issued again. Revoked stays revoked. state_ms keeps a stale event (a
# reclaimed batch) from undoing a newer one.
_FCODE_STATE = """
UPDATE fcodes AS f
SET state = CASE WHEN t.st IN ('reserved', 'paid') THEN 'redeemed' ELSE 'issued' END,
    order_id = t.o, redeemed_by = t.u,
    redeemed_at = CASE WHEN t.st IN ('reserved', 'paid') THEN to_timestamp(t.a / 1000.0)
                       ELSE f.redeemed_at END,
    state_ms = t.a
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) AS t(d, o, u, st, a)
WHERE f.digest = t.d AND f.state <> 'revoked' AND f.state_ms <= t.a
"""


def newest_per_order(rows: Iterable[OrderRow]) -> list[OrderRow]:
    """One row per order, its newest state: one statement may not touch a row twice."""
    newest: dict[str, OrderRow] = {}
    for row in rows:
        seen = newest.get(row.order_id)
        if seen is None or row.version > seen.version:
            newest[row.order_id] = row
    return list(newest.values())


async def upsert_orders(conn: asyncpg.Connection | asyncpg.Pool, rows: Iterable[OrderRow]) -> None:
    batch = newest_per_order(rows)
    if not batch:
        return
    await conn.execute(
        _UPSERT,
        [r.order_id for r in batch], [r.sale_id for r in batch], [r.user_id for r in batch],
        [r.quantity for r in batch], [r.status for r in batch], [r.version for r in batch],
        [r.expires_ms for r in batch], [r.created_ms for r in batch],
        [r.updated_ms for r in batch], [r.fcode for r in batch], [r.campaign for r in batch],
    )  # fmt: skip
    newest_of_code: dict[str, OrderRow] = {}
    for r in batch:  # one row per code: an UPDATE ... FROM applies only one of several matches
        if r.fcode and (
            r.fcode not in newest_of_code or r.updated_ms >= newest_of_code[r.fcode].updated_ms
        ):
            newest_of_code[r.fcode] = r
    fcoded = list(newest_of_code.values())
    if fcoded:
        await conn.execute(
            _FCODE_STATE,
            [r.fcode for r in fcoded], [r.order_id for r in fcoded],
            [r.user_id for r in fcoded], [r.status for r in fcoded],
            [r.updated_ms for r in fcoded],
        )  # fmt: skip


async def count_by_status(conn: asyncpg.Connection | asyncpg.Pool, sale_id: str) -> dict[str, int]:
    """Orders (not units) in PostgreSQL for a sale, by status, with a "total"."""
    rows = await conn.fetch(
        "SELECT status, count(*) AS n FROM orders WHERE sale_id = $1 GROUP BY status",
        sale_id,
    )
    counts = {"reserved": 0, "paid": 0, "expired": 0, "cancelled": 0}
    for row in rows:
        counts[row["status"]] = row["n"]
    counts["total"] = sum(counts.values())
    return counts
