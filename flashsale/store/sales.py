"""Sales in PostgreSQL: the durable definition that Redis is armed from."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from flashsale.models import (
    Admission,
    BookingPolicy,
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
    "lottery_seed, rate_per_user, burst_per_user, rate_per_address, burst_per_address, currency"
)


async def insert_sale(conn: asyncpg.Connection | asyncpg.Pool, sale: SaleDefinition) -> bool:
    """Store a new sale; False when one with this id exists already."""
    row = await conn.fetchrow(
        f"INSERT INTO sales ({_COLUMNS}) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'active', $10, $11, $12, $13, $14, $15, "
        "$16, $17, $18, $19, $20, $21, $22, $23, $24) "
        "ON CONFLICT (sale_id) DO NOTHING RETURNING sale_id",
        sale.sale_id, sale.sku, sale.name, sale.price_cents, sale.stock, sale.per_user_limit,
        ms_to_datetime(sale.starts_ms), ms_to_datetime(sale.ends_ms), sale.reservation_ttl_s,
        sale.fcode_stock,
        None if sale.fcode_opens_ms is None else ms_to_datetime(sale.fcode_opens_ms),
        *_booking_columns(sale.booking),
        sale.rate_per_user.rate, sale.rate_per_user.burst,
        sale.rate_per_address.rate, sale.rate_per_address.burst, sale.currency,
    )  # fmt: skip
    return row is not None


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
    )  # fmt: skip
    return definition, SaleState(row["state"])


def _booking_columns(policy: BookingPolicy | None) -> tuple[object, ...]:
    if policy is None:
        return (None, None, False, None, None, 1.0, 120, None)
    return (
        ms_to_datetime(policy.opens_ms), ms_to_datetime(policy.closes_ms), policy.required,
        policy.capacity, policy.admission.value, policy.admission_ratio,
        policy.admission_window_s, policy.lottery_seed,
    )  # fmt: skip


def _booking_policy(row: asyncpg.Record) -> BookingPolicy | None:
    if row["admission"] is None:
        return None
    return BookingPolicy(
        opens_ms=datetime_to_ms(row["booking_opens_at"]),
        closes_ms=datetime_to_ms(row["booking_closes_at"]),
        admission=Admission(row["admission"]), required=row["booking_required"],
        capacity=row["booking_capacity"], admission_ratio=row["admission_ratio"],
        admission_window_s=row["admission_window_s"], lottery_seed=row["lottery_seed"],
    )  # fmt: skip


def _ms_or_none(value: datetime | None) -> int | None:
    return None if value is None else datetime_to_ms(value)


async def update_state(
    conn: asyncpg.Connection | asyncpg.Pool, sale_id: str, state: SaleState
) -> None:
    await conn.execute(
        "UPDATE sales SET state = $2, updated_at = now() WHERE sale_id = $1", sale_id, state.value
    )
