"""The F-code format: 85 secure random bits, a check character that catches every single-
character typo and every adjacent swap, forgiving input, keyed digests."""

from __future__ import annotations

import hashlib
import random

import pytest

from flashsale.fcodes import codes

SAMPLE = [codes.normalize(codes.new_code()) for _ in range(300)]


def test_shape() -> None:
    code = codes.new_code()
    groups = code.split("-")
    assert [len(g) for g in groups] == [6, 6, 6]
    assert set("".join(groups)) <= set(codes.ALPHABET)
    assert not set("ILOU") & set(code)
    assert codes.DATA_CHARS * 5 >= 80


def test_codes_do_not_repeat() -> None:
    assert len({codes.new_code() for _ in range(50_000)}) == 50_000


def test_every_single_character_typo_is_caught() -> None:
    for raw in SAMPLE:
        for i, original in enumerate(raw):
            for replacement in codes.ALPHABET:
                if replacement == original:
                    continue
                typo = raw[:i] + replacement + raw[i + 1 :]
                with pytest.raises(codes.MalformedCode):
                    codes.normalize(typo)


def test_every_adjacent_swap_is_caught() -> None:
    swaps = 0
    for raw in SAMPLE:
        for i in range(len(raw) - 1):
            if raw[i] == raw[i + 1]:
                continue  # swapping equal characters changes nothing
            swapped = raw[:i] + raw[i + 1] + raw[i] + raw[i + 2 :]
            with pytest.raises(codes.MalformedCode):
                codes.normalize(swapped)
            swaps += 1
    assert swaps > 4000


def test_input_is_forgiving() -> None:
    raw = SAMPLE[0]
    shown = codes.format_code(raw)
    spaced = " ".join(raw[i : i + 3] for i in range(0, len(raw), 3))
    for typed in (shown, shown.lower(), spaced, f"  {raw}  ", raw.replace("-", "")):
        assert codes.normalize(typed) == raw
    rng = random.Random(1)
    lookalikes = {"0": "Oo", "1": "IiLl"}
    for raw in SAMPLE:
        typed = "".join(rng.choice(lookalikes.get(c, c)) for c in raw)
        assert codes.normalize(typed) == raw


@pytest.mark.parametrize("typed", ["", "ABC", "U" * 18, "!" * 18, "A" * 65, "0" * 19])
def test_not_a_code(typed: str) -> None:
    with pytest.raises(codes.MalformedCode):
        codes.normalize(typed)


def test_digest_is_keyed() -> None:
    raw = SAMPLE[0]
    key_a, key_b = codes.derive_secret("a" * 32), codes.derive_secret("b" * 32)
    assert codes.digest(key_a, raw) == codes.digest(key_a, raw)
    assert codes.digest(key_a, raw) != codes.digest(key_b, raw)
    assert codes.digest(key_a, raw) not in hashlib.sha256(raw.encode()).hexdigest()
