"""The lottery draw: a seeded, reproducible, checkable order of the booked shoppers.

At the start of a lottery sale, booking number ``b`` (1..n) gets the queue rank ``rank(b)``, a
pseudo-random permutation of 1..n fixed by the seed. Nothing is shuffled in memory: the
permutation is computed for one number at a time, so admitting a shopper costs the same for
ten bookings or ten million, and the buy script computes it inside Redis.

The method, ``flashsale-lottery-v1``, is published with the sale so that anyone holding the
seed and the booking list can recompute the draw:

* round keys ``k1..k6``: the first 4 bytes (big-endian) of
  ``SHA-256("flashsale-lottery-v1|<seed>|<i>")``;
* ``h = max(1, ceil(bitlen(n - 1) / 2))``, half-domain ``m = 2**h`` (so ``m*m >= n``);
* ``E(x)``: ``L, R = divmod(x, m)``; for each key ``L, R = R, (L + F(k, R)) % m``; ``L*m + R``,
  with ``F(k, r) = lowbias32(r XOR k) % m`` (lowbias32: xor-shift 16, times 0x7feb352d,
  xor-shift 15, times 0x846ca68b, xor-shift 16, all modulo 2**32);
* ``rank(b)``: ``x = b - 1``, repeat ``x = E(x)`` until ``x < n`` (cycle walking); ``x + 1``.

The seed is secret until the start; its SHA-256 is published from the sale's creation, so the
operator cannot pick a seed after seeing who booked.
"""

from __future__ import annotations

import hashlib
import secrets

METHOD = "flashsale-lottery-v1"
ROUNDS = 6
_MASK32 = 0xFFFFFFFF


def new_seed() -> str:
    return secrets.token_hex(16)


def commitment(seed: str) -> str:
    """What is published before the draw: the SHA-256 of the seed, in hex."""
    return hashlib.sha256(seed.encode()).hexdigest()


def round_keys(seed: str, method: str = METHOD) -> list[int]:
    """The Feistel round keys of ``seed``. ``method`` names the draw: another use of the same
    network (the opening window's shuffle, flashsale/opening/shuffle.py) draws with its own
    name, so one seed can never give two draws the same order."""
    return [
        int.from_bytes(hashlib.sha256(f"{method}|{seed}|{i}".encode()).digest()[:4], "big")
        for i in range(1, ROUNDS + 1)
    ]


def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def half_bits(n: int) -> int:
    return max(1, ((n - 1).bit_length() + 1) // 2)


class Draw:
    """The permutation of booking numbers 1..``n`` that ``seed`` picks."""

    def __init__(self, seed: str, n: int, method: str = METHOD) -> None:
        if n < 1:
            raise ValueError("a draw needs at least one booking")
        self.n = n
        self._keys = round_keys(seed, method)
        self._m = 1 << half_bits(n)

    def _encrypt(self, x: int) -> int:
        m = self._m
        left, right = divmod(x, m)
        for k in self._keys:
            left, right = right, (left + _lowbias32(right ^ k) % m) % m
        return left * m + right

    def rank(self, booking_no: int) -> int:
        """The queue rank (1 = first admitted) of ``booking_no``."""
        if not 1 <= booking_no <= self.n:
            raise ValueError(f"booking number {booking_no} is not in 1..{self.n}")
        x = booking_no - 1
        while True:
            x = self._encrypt(x)
            if x < self.n:
                return x + 1

    def ranks(self) -> list[int]:
        """Every rank at once: ``ranks()[b - 1] == rank(b)`` for b in 1..n.

        The same permutation, computed for a whole list (a million numbers in about a second):
        a round function takes only the right half, which is below m <= 2**16, so each round's
        F(k, .) is computed once per value into a table instead of once per number."""
        n, m = self.n, self._m
        tables = [[_lowbias32(r ^ k) % m for r in range(m)] for k in self._keys]
        out = [0] * n
        for b in range(n):
            x = b
            while True:
                left, right = divmod(x, m)
                for table in tables:
                    left, right = right, (left + table[right]) % m
                x = left * m + right
                if x < n:
                    break
            out[b] = x + 1
        return out
