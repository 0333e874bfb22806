"""A sale's opening window as fields of its Redis hash, and back.

==============  ===============================================================================
field           contents
==============  ===============================================================================
op_win_ms       the window W (ms); absent on a sale without one (buy.lua reads it with the
                sale's other fields: a sale without a window pays nothing more)
op_seed         the seed of the draw (revealed by the sale view once the window closed)
op_keys         the draw's round keys, comma-separated, for buy.lua's draw_rank
op_tickets      tickets given so far: the last ticket number
op_n            tickets given within the window; set when the window closes (by the first buy
                or admit.lua after it), absent before. Tickets above it came later
op_digest       SHA-256 of the ordered list of the window's tickets, once computed (roll.py)
adm_*           the admission state, as for a booking queue (engine/booking_fields.py)
==============  ===============================================================================

The tickets themselves are ``<p>:{<sale>}:tk:<bucket>`` hashes, user digest -> ticket number,
bucketed like bookings (one ticket per user id), and the ticket roll ``<p>:{<sale>}:tkroll``,
the 10-byte user digest of each ticket by number, which the ticket list is read from
(engine/keys.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction

from flashsale.models import OpeningPolicy, SaleDefinition
from flashsale.opening import shuffle

# Every field opening_fields() may write (besides the adm_* ones of a booking queue): an edit
# of a sale deletes them before writing the new definition's
OPENING_FIELD_NAMES = frozenset({"op_win_ms", "op_seed", "op_keys", "op_tickets"})


def opening_fields(sale: SaleDefinition) -> dict[str, str | int]:
    """The sale hash fields of ``sale``'s opening window; none without one."""
    opening = sale.opening
    if opening is None:
        return {}
    assert opening.seed is not None, "a sale with an opening window is armed with its seed"
    # as many admitted at the draw as public units times the ratio, counted exactly (in floats
    # 100 units at 0.07 would admit 8)
    admitted = math.ceil(sale.public_stock * Fraction(repr(opening.admission_ratio)))
    return {
        "op_win_ms": opening.window_ms,
        "op_seed": opening.seed,
        "op_keys": shuffle.round_keys_csv(opening.seed),
        "op_tickets": 0,
        "adm_ratio": repr(opening.admission_ratio),
        "adm_window_s": opening.admission_window_s,
        "adm_slots": admitted,
        "adm_cursor": 1,
        "adm_freed": 0,
        "adm_rate": "0",
        "adm_next_ms": 0,
    }


def opening_policy(f: Mapping[str, str | None]) -> OpeningPolicy | None:
    """The opening window stored in a sale hash; None when the sale has none."""
    window_ms = int(f.get("op_win_ms") or 0)
    if window_ms <= 0:
        return None
    return OpeningPolicy(
        window_ms=window_ms,
        seed=f.get("op_seed") or None,
        admission_ratio=float(f.get("adm_ratio") or 1.0),
        admission_window_s=int(f.get("adm_window_s") or 120),
    )
