"""Identifiers: sale ids chosen by people, order ids made by the service."""

from __future__ import annotations

import os
import re
import time

SALE_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
# An order id is "<sale_id>.<26 base32 chars>": the sale id lets the service find the order's
# keys (and Redis Cluster slot) from the id alone; the rest is 48 bits of milliseconds and 80
# random bits, so ids sort by creation time and cannot be guessed.
ORDER_ID_RE = re.compile(r"^([a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?)\.([0-9a-z]{26})$")


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_sale_id() -> str:
    return "sale-" + _base32(int.from_bytes(os.urandom(8), "big"), 12)


def new_order_id(sale_id: str) -> str:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{sale_id}.{_base32((ms << 80) | rand, 26)}"


def sale_of_order(order_id: str) -> str | None:
    """The sale an order id belongs to, or None when the id is not one of ours."""
    match = ORDER_ID_RE.match(order_id)
    return match.group(1) if match else None
