"""Exporting a sale's F-codes: one row per code, for marketing to see who used which code and
whether that order was paid.

A code is never stored, only its digest, so a row names it by its ``code_ref`` (the file
``flashsale fcodes issue`` wrote has the same column beside each code). PostgreSQL's view:
redemptions and payments arrive through the order writer, a moment after Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg

from flashsale import errors
from flashsale.fcodes import codes
from flashsale.models import datetime_to_ms, iso
from flashsale.store import sales as sale_store

#: the fields of each exported code, in order
COLUMNS = (
    "code_ref", "campaign", "bound_user", "state", "issued_at", "order_id", "order_status",
    "paid", "redeemed_by", "redeemed_at", "revoked_at",
)  # fmt: skip
STATES = ("issued", "redeemed", "revoked")
_FETCH_ROWS = 10_000

# order_id and redeemed_* are the code's last order: one that expired or was cancelled gave
# the code back (state "issued" again), and its order_status says so
_QUERY = """
SELECT f.digest, f.campaign, f.bound_user, f.state, f.issued_at, f.order_id,
       o.status AS order_status, f.redeemed_by, f.redeemed_at, f.revoked_at
FROM fcodes f LEFT JOIN orders o ON o.order_id = f.order_id
WHERE f.sale_id = $1 AND ($2::text IS NULL OR f.campaign = $2)
  AND ($3::text IS NULL OR f.state = $3)
ORDER BY f.campaign, f.digest
"""


async def check_export(pool: asyncpg.Pool, sale_id: str, campaign: str | None) -> None:
    """The sale (and the campaign, if one is asked for) exists: before any file is made."""
    if await sale_store.fetch_sale(pool, sale_id) is None:
        raise errors.SaleNotFound(f"no sale {sale_id!r} in PostgreSQL")
    if campaign is not None and not await pool.fetchval(
        "SELECT 1 FROM fcode_campaigns WHERE sale_id = $1 AND campaign = $2", sale_id, campaign
    ):
        raise errors.NotFound(f"no F-code campaign {campaign!r} for sale {sale_id!r}")


async def exported_codes(
    pool: asyncpg.Pool, sale_id: str, *, campaign: str | None = None, state: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Each code of the sale (of one campaign, in one state) as a dict of :data:`COLUMNS`, by
    campaign and code_ref, read from one snapshot a batch at a time."""
    if state is not None and state not in STATES:
        raise errors.InvalidRequest(f"state must be one of {', '.join(STATES)}")
    async with pool.acquire() as conn, conn.transaction(
        isolation="repeatable_read", readonly=True
    ):  # fmt: skip
        async for r in conn.cursor(_QUERY, sale_id, campaign, state, prefetch=_FETCH_ROWS):
            status = r["order_status"]
            yield {
                "code_ref": codes.code_ref(r["digest"]),
                "campaign": r["campaign"],
                "bound_user": r["bound_user"],
                "state": r["state"],
                "issued_at": _time(r["issued_at"]),
                "order_id": r["order_id"],
                "order_status": status,
                "paid": None if status is None else status == "paid",
                "redeemed_by": r["redeemed_by"],
                "redeemed_at": _time(r["redeemed_at"]),
                "revoked_at": _time(r["revoked_at"]),
            }


def _time(value: datetime | None) -> str | None:
    """As the API writes times: ISO 8601 in UTC with milliseconds."""
    return None if value is None else iso(datetime_to_ms(value))
