"""The F-code format: 85 random bits in Crockford base32, a check character, keyed hashes.

A code is 17 data characters and one check character, shown in three groups of six::

    7K3M9Q-X2VHD8-PW4RTN

The check character is Damm's algorithm over GF(32) (``r = 2r xor d``; ``2`` is the field's
generator), a totally anti-symmetric quasigroup, so every single-character error and every swap of
two adjacent characters is caught without a lookup. Input is forgiving: case, spaces and hyphens
do not matter, and O reads as 0, I and L as 1.

The service never stores a code: only ``digest(secret, code)``, an HMAC-SHA256 truncated to 96
bits, so a leaked database or Redis dump gives away no usable code.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
DATA_CHARS = 17  # 85 bits
CODE_CHARS = DATA_CHARS + 1
GROUP = 6
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
_FOLD = str.maketrans({"O": "0", "I": "1", "L": "1", "-": None, " ": None, "\t": None})
_POLY = 0b100101  # x^5 + x^2 + 1, irreducible over GF(2)
_TIMES2 = [((x << 1) ^ _POLY) if x & 0x10 else (x << 1) for x in range(32)]


class MalformedCode(ValueError):
    """Not an F-code: wrong length, a character outside the alphabet, or a failed check."""


def _check_value(values: list[int]) -> int:
    interim = 0
    for v in values:
        interim = _TIMES2[interim] ^ v
    # the check c makes the final interim 0: 2*interim xor c == 0
    return _TIMES2[interim]


def check_character(data: str) -> str:
    return ALPHABET[_check_value([_VALUE[c] for c in data])]


def format_code(raw: str) -> str:
    """``raw`` (18 characters) in groups of six, as shown to people."""
    return "-".join(raw[i : i + GROUP] for i in range(0, len(raw), GROUP))


def new_code() -> str:
    """A fresh code, formatted. 85 bits from the operating system's secure generator."""
    value = secrets.randbits(DATA_CHARS * 5)
    data = "".join(ALPHABET[(value >> (5 * i)) & 31] for i in range(DATA_CHARS))
    return format_code(data + check_character(data))


def normalize(code: str) -> str:
    """The canonical 18 characters of a typed code, or :class:`MalformedCode`."""
    if len(code) > 64:
        raise MalformedCode("too long for an F-code")
    raw = code.upper().translate(_FOLD)
    if len(raw) != CODE_CHARS:
        raise MalformedCode(f"an F-code has {CODE_CHARS} characters")
    try:
        values = [_VALUE[c] for c in raw]
    except KeyError:
        raise MalformedCode(
            "an F-code uses only digits and letters other than I, L, O, U"
        ) from None
    interim = 0
    for v in values:
        interim = _TIMES2[interim] ^ v
    if interim != 0:
        raise MalformedCode("the check character does not match: a character is mistyped")
    return raw


def derive_secret(token_secret: str) -> bytes:
    """The default F-code key when none is configured: stable as long as the token secret is,
    and different from it."""
    return hmac.digest(token_secret.encode(), b"flashsale f-code digest key", "sha256")


def digest(secret: bytes, normalized: str) -> str:
    """The stored form of a code: 24 hex characters of HMAC-SHA256."""
    return hmac.digest(secret, normalized.encode(), hashlib.sha256)[:12].hex()


CODE_REF_CHARS = 16


def code_ref(digest: str) -> str:
    """A code's short reference: the first 16 hex characters of its digest. Exports list codes
    by it (the code itself is never stored), and ``issue`` writes it beside each code, so the
    two files join. 64 bits: among ten million codes two share a reference with a chance of a
    few in a million (12 characters would make that about one in six)."""
    return digest[:CODE_REF_CHARS]
