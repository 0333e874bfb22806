"""Identifiers: sale ids chosen by people, order ids made by the service."""

from __future__ import annotations

import base64
import os
import re
import time

# \Z, not $: "$" also matches before a trailing newline
SALE_ID_RE = re.compile(r"\A[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?\Z")
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
# An order id is "<sale_id>.<26 base32 chars>": the sale id lets the service find the order's
# keys (and Redis Cluster slot) from the id alone; the rest is 48 bits of milliseconds and 80
# random bits, so ids sort by creation time and cannot be guessed.
ORDER_ID_RE = re.compile(r"\A([a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?)\.([0-9a-z]{26})\Z")


# RFC 4648 base32 digits -> Crockford's, same order, so ids still sort by time
_TO_CROCKFORD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _CROCKFORD)


def _base32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").translate(_TO_CROCKFORD)


def new_sale_id() -> str:
    return "sale-" + _base32(os.urandom(8))[:12]


# every pair of Crockford digits, for the 10 bits they encode: a new order id is 13 lookups
# (base64.b32encode runs a Python loop, a noticeable share of a buy)
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_SHIFTS = range(120, -1, -10)


def new_order_id(sale_id: str) -> str:
    ms = time.time_ns() // 1_000_000
    bits = ((ms & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10), "big")) << 2
    return sale_id + "." + "".join([_PAIRS[(bits >> s) & 1023] for s in _SHIFTS])


def sale_of_order(order_id: str) -> str | None:
    """The sale an order id belongs to, or None when the id is not one of ours."""
    match = ORDER_ID_RE.match(order_id)
    return match.group(1) if match else None
