"""The F-code lane's release: unredeemed F-code units pass to the crowd.

A sale created with ``fcode_release_at`` keeps its F-code units (``fcode_available``) for code
holders until that moment; then every unit nobody redeemed moves to the public lane
(``available``), atomically and exactly once, and the lane closes: a later redemption is
answered 409 ``fcode_lane_closed`` and the code stays unused (it can be revoked, or honoured in
another sale). An F-code unit given back after the release (an expired or cancelled F-code
order) goes to the public lane too. ``fcode_released`` counts every unit that passed.

The release is made by the first script to meet the moment: the sweeper's admit.lua (every
tick, for every sale, so a moment that passed while the service or Redis was away is caught up
on the next pass) or a buy (buy.lua), whichever comes first; both turn the sale hash's
``fc_lane`` from the moment to ``closed`` in the same step as they move the units, so the
units move once. A sale with a queue (a booking queue or an opening window) admits one more
shopper per released unit. expire.lua, cancel.lua and pay.lua send a returning F-code unit to
the public lane once ``fc_lane`` is ``closed``.

==================  =======================================================================
sale hash field     contents
==================  =======================================================================
fc_release_ms       the release moment (ms), as defined
fc_lane             the moment (ms) until the release is made, then ``closed``
fcode_released      units passed to the public lane; absent until the release
==================  =======================================================================
"""

from __future__ import annotations

from flashsale.models import SaleDefinition

# Every field release_fields() may write: an edit deletes them before writing the new ones
RELEASE_FIELD_NAMES = frozenset({"fc_release_ms", "fc_lane"})


def release_fields(sale: SaleDefinition) -> dict[str, int]:
    """The sale hash fields of ``sale``'s F-code release; none without one."""
    if sale.fcode_release_ms is None:
        return {}
    return {"fc_release_ms": sale.fcode_release_ms, "fc_lane": sale.fcode_release_ms}
