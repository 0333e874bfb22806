"""Who the crowd is: which booked shoppers come, in what order, and their tokens.

Booker ``i`` (0-based) is user ``booker-<i>`` and, imported in list order into a fresh sale,
gets booking number ``i + 1``. In an ``arrival`` sale any booked shopper may buy, so the crowd
is a random sample. In a queued sale only the front of the queue is admitted at first, so the
crowd comes in queue order (booking order, or the lottery's draw), with a few no-shows whose
places must pass on; the late arrivals are from the back of the queue. The bots' accounts are
booked shoppers too (a scalper books as many as it can), none of them among the others: in a
queued sale from anywhere in the queue but its front and back.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from flashsale.auth import issue_token
from flashsale.booking import lottery
from loadtest.pools import BOT_ACCOUNTS, BUYERS, FCODE_HOLDERS, POLLERS, WALK_INS, write_pool
from loadtest.rehearsal.options import Sizes

TOKEN_TTL_S = 4 * 3600
_MASK32 = 0xFFFFFFFF


def booker(i: int) -> str:
    return f"booker-{i}"


def write_booking_list(path: Path, bookers: int) -> None:
    """One user id a line, for ``flashsale bookings import``."""
    with path.open("w") as f:
        for start in range(0, bookers, 100_000):
            f.write("".join(f"booker-{i}\n" for i in range(start, min(bookers, start + 100_000))))


def _lowbias32(x: int) -> int:  # as flashsale/booking/lottery.py documents it
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def lottery_booking_no(seed: str, n: int, rank: int) -> int:
    """The booking number the draw puts at ``rank``: the inverse of ``lottery.Draw.rank``
    (the Feistel rounds backwards, with the same cycle walking)."""
    keys = lottery.round_keys(seed)
    m = 1 << lottery.half_bits(n)
    x = rank - 1
    while True:
        left, right = divmod(x, m)
        for k in reversed(keys):
            left, right = (right - _lowbias32(left ^ k) % m) % m, left
        x = left * m + right
        if x < n:
            return x + 1


def queue_order(admission: str, bookers: int, count: int, seed: str) -> list[int]:
    """Indices of the first ``count`` bookers in the admission order."""
    if admission == "lottery":
        return [lottery_booking_no(seed, bookers, r) - 1 for r in range(1, count + 1)]
    return list(range(count))


def choose_bookers(
    admission: str, bookers: int, sizes: Sizes, rng: random.Random, lottery_seed: str
) -> tuple[list[int], list[int], list[int]]:
    """(buyers in the order the crowd takes them, late arrivals, the bots' accounts), as
    booker indices, no index twice."""
    if admission == "arrival":
        chosen = rng.sample(range(bookers), sizes.buyers + sizes.pollers + sizes.bot_accounts)
        pollers_end = sizes.buyers + sizes.pollers
        return chosen[: sizes.buyers], chosen[sizes.buyers : pollers_end], chosen[pollers_end:]
    front = queue_order(admission, bookers, sizes.buyers + sizes.no_shows, lottery_seed)
    # no-shows hold places among the admitted ones and never come
    no_show = set(rng.sample(range(min(len(front), sizes.buyers)), sizes.no_shows))
    buyers = [b for pos, b in enumerate(front) if pos not in no_show]
    taken = set(front)
    last_ranks = range(bookers, max(0, bookers - 2 * sizes.pollers), -1)
    if admission == "lottery":
        back = [lottery_booking_no(lottery_seed, bookers, r) - 1 for r in last_ranks]
    else:
        back = [r - 1 for r in last_ranks]
    pollers = [b for b in back if b not in taken][: sizes.pollers]
    taken |= set(pollers)
    free = bookers - len(taken)
    bots = [b for b in rng.sample(range(bookers), min(bookers, sizes.bot_accounts + len(taken)))
            if b not in taken][: min(free, sizes.bot_accounts)]  # fmt: skip
    return buyers, pollers, bots


def _tokens(secret: str, users: Iterator[str]) -> Iterator[tuple[str, str]]:
    for user in users:
        yield user, issue_token(secret, user, ttl_s=TOKEN_TTL_S)


def write_crowd_pools(
    pool_dir: Path,
    secret: str,
    buyers: list[int],
    pollers: list[int],
    walk_ins: int,
    bots: list[int],
) -> int:
    """Mint a token for each booked buyer, late arrival, walk-in and bot account; how many."""
    pool_dir.mkdir(parents=True, exist_ok=True)
    minted = write_pool(pool_dir, BUYERS, _tokens(secret, (booker(i) for i in buyers)))
    minted += write_pool(pool_dir, POLLERS, _tokens(secret, (booker(i) for i in pollers)))
    minted += write_pool(pool_dir, BOT_ACCOUNTS, _tokens(secret, (booker(i) for i in bots)))
    walk_in_users = (f"walk-in-{i}" for i in range(walk_ins))
    return minted + write_pool(pool_dir, WALK_INS, _tokens(secret, walk_in_users))


def write_fcode_pool(pool_dir: Path, secret: str, fcode_rows: list[tuple[str, str]]) -> int:
    """A token for each F-code holder, with their code (``fcode_rows``: (code, holder))."""
    holders = (
        (user, issue_token(secret, user, ttl_s=TOKEN_TTL_S), code) for code, user in fcode_rows
    )
    return write_pool(pool_dir, FCODE_HOLDERS, holders)
