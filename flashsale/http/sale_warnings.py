"""What a new or corrected sale definition may hold but probably does not mean: answered as
``warnings`` beside the sale, never refused."""

from __future__ import annotations

from flashsale.models import SaleDefinition, iso

# a start this far ahead is more likely a mistyped year than a plan
FAR_AHEAD_MS = 366 * 86_400_000
# a start this far in the past is worth a word; "now" typed by hand is a moment ago
PAST_GRACE_MS = 60_000


def sale_warnings(sale: SaleDefinition, now_ms: int) -> list[str]:
    found = []
    if sale.starts_ms < now_ms - PAST_GRACE_MS:
        found.append(
            f"starts_at {iso(sale.starts_ms)} is in the past: the sale is open from now on"
        )
    elif sale.starts_ms > now_ms + FAR_AHEAD_MS:
        found.append(f"starts_at {iso(sale.starts_ms)} is more than a year ahead: check the year")
    return found
