"""A sale's booking policy as fields of its Redis hash, and back."""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction

from flashsale.booking import lottery
from flashsale.models import Admission, BookingPolicy, SaleDefinition


def initial_admissions(sale: SaleDefinition) -> int:
    """Shoppers admitted when the sale opens: the public units times the admission ratio."""
    assert sale.booking is not None
    # exactly, as the ratio was written: in floats 100 units at 0.07 would admit 8
    return math.ceil(sale.public_stock * Fraction(repr(sale.booking.admission_ratio)))


# Every field booking_fields() may write: an edit deletes those of the old policy first
BOOKING_FIELD_NAMES = frozenset({
    "admission", "bk_opens_ms", "bk_closes_ms", "bk_required", "bk_capacity", "adm_ratio",
    "adm_window_s", "adm_slots", "adm_cursor", "adm_freed", "adm_rate", "adm_next_ms",
    "lottery_seed", "lottery_keys",
})  # fmt: skip


def booking_fields(sale: SaleDefinition) -> dict[str, str | int]:
    """The sale hash fields of ``sale``'s booking policy; none without booking."""
    policy = sale.booking
    if policy is None:
        return {}
    fields: dict[str, str | int] = {
        "admission": policy.admission.value,
        "bk_opens_ms": policy.opens_ms,
        "bk_closes_ms": policy.closes_ms,
        "bk_required": int(policy.required),
        "bk_capacity": policy.capacity or 0,
        "adm_ratio": repr(policy.admission_ratio),
        "adm_window_s": policy.admission_window_s,
        "adm_slots": initial_admissions(sale),
        "adm_cursor": 1,
        "adm_freed": 0,
        "adm_rate": "0",
        "adm_next_ms": 0,
    }
    if policy.admission is Admission.LOTTERY:
        assert policy.lottery_seed is not None
        fields["lottery_seed"] = policy.lottery_seed
        fields["lottery_keys"] = ",".join(map(str, lottery.round_keys(policy.lottery_seed)))
    return fields


def booking_policy(f: Mapping[str, str | None]) -> BookingPolicy | None:
    """The booking policy stored in a sale hash, None when the sale takes no bookings."""
    admission = f.get("admission")
    if not admission:
        return None
    # the adm_* fields of an arrival sale are its opening window's, if any (opening/fields.py)
    queued = Admission(admission).queued
    return BookingPolicy(
        opens_ms=int(f["bk_opens_ms"] or 0),
        closes_ms=int(f["bk_closes_ms"] or 0),
        admission=Admission(admission),
        required=f["bk_required"] == "1",
        capacity=int(f["bk_capacity"] or 0) or None,
        admission_ratio=float(f["adm_ratio"] or 1.0) if queued else 1.0,
        admission_window_s=int(f["adm_window_s"] or 0) if queued else 120,
        lottery_seed=f.get("lottery_seed") or None,
    )
