"""Sales in PostgreSQL: the durable definition that Redis is armed from."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from flashsale.models import (
    Admission,
    BookingPolicy,
    OpeningPolicy,
    RateLimit,
    SaleDefinition,
    SaleState,
    datetime_to_ms,
    ms_to_datetime,
)

_COLUMNS = (
    "sale_id, sku, name, price_cents, stock, per_user_limit, starts_at, ends_at, "
    "reservation_ttl_s, state, fcode_stock, fcode_opens_at, booking_opens_at, booking_closes_at, "
    "booking_required, booking_capacity, admission, admission_ratio, admission_window_s, "
    "lottery_seed, rate_per_user, burst_per_user, rate_per_address, burst_per_address, currency, "
    "opening_window_ms, opening_seed, fcode_release_at"
)


async def insert_sale(conn: asyncpg.Connection | asyncpg.Pool, sale: SaleDefinition) -> bool:
    """Store a new sale; False when one with this id exists already."""
    row = await conn.fetchrow(
        f"INSERT INTO sales ({_COLUMNS}) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'active', $10, $11, $12, $13, $14, $15, "
        "$16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27) "
        "ON CONFLICT (sale_id) DO NOTHING RETURNING sale_id",
        *_definition_values(sale),
    )
    return row is not None


def _definition_values(sale: SaleDefinition) -> tuple[object, ...]:
    """The values of ``_COLUMNS`` but ``state``, in their order."""
    return (
        sale.sale_id, sale.sku, sale.name, sale.price_cents, sale.stock, sale.per_user_limit,
        ms_to_datetime(sale.starts_ms), ms_to_datetime(sale.ends_ms), sale.reservation_ttl_s,
        sale.fcode_stock,
        None if sale.fcode_opens_ms is None else ms_to_datetime(sale.fcode_opens_ms),
        *_booking_columns(sale.booking, sale.opening),
        sale.rate_per_user.rate, sale.rate_per_user.burst,
        sale.rate_per_address.rate, sale.rate_per_address.burst, sale.currency,
        sale.opening.window_ms if sale.opening else None,
        sale.opening.seed if sale.opening else None,
        None if sale.fcode_release_ms is None else ms_to_datetime(sale.fcode_release_ms),
    )  # fmt: skip


def _definition_columns() -> list[str]:
    return [c.strip() for c in _COLUMNS.split(",") if c.strip() != "state"]


async def update_sale(conn: asyncpg.Connection, sale: SaleDefinition) -> None:
    """Write a new definition over a sale's row (its state stays)."""
    columns = _definition_columns()[1:]  # not sale_id, the $1 of the WHERE
    assignments = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=2))
    await conn.execute(
        f"UPDATE sales SET {assignments}, updated_at = now() WHERE sale_id = $1",
        *_definition_values(sale),
    )


async def lock_sale(
    conn: asyncpg.Connection, sale_id: str
) -> tuple[SaleDefinition, SaleState] | None:
    """The sale's row, locked until the transaction ends: FOR UPDATE also waits for, and then
    holds off, every insert that references the sale (an order, a booking, an F-code
    campaign), since those take a KEY SHARE lock on it."""
    if await conn.fetchval("SELECT 1 FROM sales WHERE sale_id = $1 FOR UPDATE", sale_id) is None:
        return None
    return await fetch_sale(conn, sale_id)


async def dependents(conn: asyncpg.Connection | asyncpg.Pool, sale_id: str) -> dict[str, int]:
    """What PostgreSQL holds of a sale besides its row: orders, bookings, F-code campaigns,
    usable (issued, not redeemed or revoked) F-codes, payments."""
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM orders WHERE sale_id = $1) AS orders, "
        "(SELECT count(*) FROM bookings WHERE sale_id = $1) AS bookings, "
        "(SELECT count(*) FROM fcode_campaigns WHERE sale_id = $1) AS campaigns, "
        "(SELECT count(*) FROM fcodes WHERE sale_id = $1 AND state = 'issued') AS usable_fcodes, "
        "(SELECT count(*) FROM payments WHERE sale_id = $1) AS payments",
        sale_id,
    )
    return dict(row)


async def delete_sale(conn: asyncpg.Connection, sale_id: str) -> None:
    await conn.execute("DELETE FROM sales WHERE sale_id = $1", sale_id)


async def list_sales(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    """Every sale's id, the latest start first."""
    rows = await conn.fetch("SELECT sale_id FROM sales ORDER BY starts_at DESC, sale_id")
    return [row["sale_id"] for row in rows]


async def fetch_sale(
    conn: asyncpg.Connection | asyncpg.Pool, sale_id: str
) -> tuple[SaleDefinition, SaleState] | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM sales WHERE sale_id = $1", sale_id)
    if row is None:
        return None
    definition = SaleDefinition(
        sale_id=row["sale_id"], sku=row["sku"], name=row["name"],
        price_cents=row["price_cents"], stock=row["stock"],
        per_user_limit=row["per_user_limit"], starts_ms=datetime_to_ms(row["starts_at"]),
        ends_ms=datetime_to_ms(row["ends_at"]), reservation_ttl_s=row["reservation_ttl_s"],
        fcode_stock=row["fcode_stock"],
        fcode_opens_ms=_ms_or_none(row["fcode_opens_at"]),
        booking=_booking_policy(row),
        rate_per_user=RateLimit(row["rate_per_user"], row["burst_per_user"]),
        rate_per_address=RateLimit(row["rate_per_address"], row["burst_per_address"]),
        currency=row["currency"],
        opening=_opening_policy(row),
        fcode_release_ms=_ms_or_none(row["fcode_release_at"]),
    )  # fmt: skip
    return definition, SaleState(row["state"])


def _booking_columns(
    policy: BookingPolicy | None, opening: OpeningPolicy | None
) -> tuple[object, ...]:
    # admission_ratio and admission_window_s are those of the sale's one queue: a booking
    # queue's, or an opening window's (whose booking, if any, admits by arrival)
    if opening is not None:
        ratio, window_s = opening.admission_ratio, opening.admission_window_s
    elif policy is not None:
        ratio, window_s = policy.admission_ratio, policy.admission_window_s
    else:
        ratio, window_s = 1.0, 120
    if policy is None:
        return (None, None, False, None, None, ratio, window_s, None)
    return (
        ms_to_datetime(policy.opens_ms), ms_to_datetime(policy.closes_ms), policy.required,
        policy.capacity, policy.admission.value, ratio, window_s, policy.lottery_seed,
    )  # fmt: skip


def _booking_policy(row: asyncpg.Record) -> BookingPolicy | None:
    if row["admission"] is None:
        return None
    admission = Admission(row["admission"])
    # an arrival admission has no ratio or window of its own (the columns may be an opening
    # window's): its policy holds the defaults, as parse_sale makes it
    queued = admission.queued
    return BookingPolicy(
        opens_ms=datetime_to_ms(row["booking_opens_at"]),
        closes_ms=datetime_to_ms(row["booking_closes_at"]),
        admission=admission, required=row["booking_required"],
        capacity=row["booking_capacity"],
        admission_ratio=row["admission_ratio"] if queued else 1.0,
        admission_window_s=row["admission_window_s"] if queued else 120,
        lottery_seed=row["lottery_seed"],
    )  # fmt: skip


def _opening_policy(row: asyncpg.Record) -> OpeningPolicy | None:
    if not row["opening_window_ms"]:
        return None
    return OpeningPolicy(
        window_ms=row["opening_window_ms"], seed=row["opening_seed"],
        admission_ratio=row["admission_ratio"], admission_window_s=row["admission_window_s"],
    )  # fmt: skip


def _ms_or_none(value: datetime | None) -> int | None:
    return None if value is None else datetime_to_ms(value)


async def update_state(
    conn: asyncpg.Connection | asyncpg.Pool, sale_id: str, state: SaleState
) -> None:
    await conn.execute(
        "UPDATE sales SET state = $2, updated_at = now() WHERE sale_id = $1", sale_id, state.value
    )
