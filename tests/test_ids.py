"""Order ids: "<sale>.<26 Crockford base32 digits>" of 48 bits of milliseconds and 80 random
bits, so that they sort by creation time and cannot be guessed."""

from __future__ import annotations

import base64
import random
import time

from flashsale import ids


def test_an_order_id_is_the_base32_of_its_time_and_randomness() -> None:
    before = time.time_ns() // 1_000_000
    order_id = ids.new_order_id("sale-1")
    after = time.time_ns() // 1_000_000
    sale_id, _, digits = order_id.partition(".")
    assert sale_id == "sale-1"
    assert ids.sale_of_order(order_id) == "sale-1"
    to_rfc4648 = str.maketrans(
        "0123456789ABCDEFGHJKMNPQRSTVWXYZ", "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    )
    raw = base64.b32decode(digits.upper().translate(to_rfc4648) + "======")
    assert len(raw) == 16
    assert before <= int.from_bytes(raw[:6], "big") <= after


def test_order_ids_sort_by_time_and_differ() -> None:
    made = []
    for _ in range(50):
        made.append(ids.new_order_id("s"))
        time.sleep(0.002)
    assert made == sorted(made)
    assert len({ids.new_order_id("s") for _ in range(10_000)}) == 10_000


def test_times_keep_their_milliseconds_however_far_off() -> None:
    from flashsale.models import datetime_to_ms, iso, ms_to_datetime

    for ms in (946_684_800_000, 1_795_337_018_303, 169_112_206_567_504, 253_402_300_799_999):
        assert iso(ms).endswith(f".{ms % 1000:03d}Z"), (ms, iso(ms))
        assert datetime_to_ms(ms_to_datetime(ms)) == ms


def test_iso_times_match_the_standard_library_through_its_cache() -> None:
    """iso() keeps the text of recent seconds; it must still say what datetime says, for
    repeats, neighbours, far-off times and after the cache has been cleared (> 4,096 seconds)."""
    from flashsale.models import iso, ms_to_datetime

    rng = random.Random(7)
    now = int(time.time() * 1000)
    samples = [now + d for d in (0, 1, 999, 1000, 1001, 59_999, 60_000, 86_399_999)]
    samples += [rng.randrange(946_684_800_000, 253_402_300_800_000) for _ in range(6000)]
    samples += samples[:50]  # repeats, answered from the cache
    for ms in samples:
        expected = ms_to_datetime(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert iso(ms) == expected, ms
