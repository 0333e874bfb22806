"""The crowd's identity pools, shared by the Locust processes: split, never lost.

Every line of every pool (booked shoppers, F-code holders, late arrivals, walk-ins, the bots'
accounts) goes to exactly one process, and together the processes go through all of it,
whichever of them run the users that take from it. Each bot owns a fixed set of accounts.
"""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path

import pytest

from loadtest.pools import (
    BOT_ACCOUNTS,
    BUYERS,
    FCODE_HOLDERS,
    POLLERS,
    Identity,
    Pool,
    block_size,
    write_pool,
)

SIZES = (1, 2, 3, 7, 25, 101, 257)


def _write(pool_dir: Path, name: str, size: int) -> list[str]:
    users = [f"user-{i}" for i in range(size)]
    rows = ((u, f"token-{u}", f"CODE{i}") for i, u in enumerate(users))
    assert write_pool(pool_dir, name, rows) == size
    return users


def _drain(pools: list[Pool], rng: random.Random, users_of: list[int]) -> list[list[str]]:
    """Take from the pools in a random interleaving until none gives more; ``users_of[i]`` is
    how many users process i runs (0: it never asks, as a worker without such users)."""
    taken: list[list[str]] = [[] for _ in pools]
    active = [i for i, n in enumerate(users_of) if n]
    while active:
        i = rng.choice(active)
        identity = pools[i].take()
        if identity is None:
            active.remove(i)
        else:
            taken[i].append(identity.user)
    return taken


@pytest.mark.parametrize("processes", [1, 2, 3, 4])
@pytest.mark.parametrize("size", SIZES)
def test_every_process_gets_a_disjoint_share_and_together_the_whole_pool(
    tmp_path: Path, processes: int, size: int
) -> None:
    users = _write(tmp_path, FCODE_HOLDERS, size)
    pools = [Pool(tmp_path, FCODE_HOLDERS, processes=processes, wrap=False)
             for _ in range(processes)]  # fmt: skip
    assert all(len(p) == size for p in pools)
    taken = _drain(pools, random.Random(size * 10 + processes), [1] * processes)
    flat = [u for share in taken for u in share]
    assert sorted(flat) == sorted(users)  # all of it ...
    assert len(set(flat)) == len(flat)  # ... each line once
    assert sum(p.taken for p in pools) == size
    assert all(p.reused == 0 for p in pools)


@pytest.mark.parametrize("processes", [2, 3, 4])
@pytest.mark.parametrize("size", SIZES)
def test_a_process_without_users_of_a_pool_loses_none_of_it(
    tmp_path: Path, processes: int, size: int
) -> None:
    """Locust put every F-code holder on one of two workers: the other's share of the codes
    was never used, 8 F-code units went unsold and the sale was not sold out."""
    users = _write(tmp_path, FCODE_HOLDERS, size)
    pools = [Pool(tmp_path, FCODE_HOLDERS, processes=processes, wrap=False)
             for _ in range(processes)]  # fmt: skip
    only_first = [1] + [0] * (processes - 1)
    taken = _drain(pools, random.Random(size), only_first)
    assert taken[0] == users  # in the pool's order: the front of a queue first
    assert all(not share for share in taken[1:])


@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_a_wrapping_pool_comes_round_again_in_order_and_counts_the_returns(
    tmp_path: Path, processes: int
) -> None:
    users = _write(tmp_path, BUYERS, 7)
    pools = [Pool(tmp_path, BUYERS, processes=processes, wrap=True) for _ in range(processes)]
    rng = random.Random(processes)
    got: list[str] = []
    for _ in range(7 * 3):
        identity = pools[rng.randrange(processes)].take()
        assert identity is not None
        got.append(identity.user)
    # every shopper comes before anyone comes back, and the returns are counted
    assert sorted(got[:7]) == sorted(users)
    assert sum(p.reused for p in pools) == sum(p.taken for p in pools) - 7 >= 7 * 3 - 7


def _take_all(pool_dir: str, name: str, processes: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    pool = Pool(pool_dir, name, processes=processes, wrap=False)
    mine = []
    while (identity := pool.take()) is not None:
        mine.append(identity.user)
    out.put(mine)


@pytest.mark.parametrize("processes", [2, 3, 4])
def test_processes_share_a_pool_through_its_claim_counter(tmp_path: Path, processes: int) -> None:
    """Real processes at once, as Locust's workers: the file lock keeps their shares apart."""
    users = _write(tmp_path, POLLERS, 2_001)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_take_all, args=(str(tmp_path), POLLERS, processes, out))
             for _ in range(processes)]  # fmt: skip
    for p in procs:
        p.start()
    shares = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    flat = [u for share in shares for u in share]
    assert len(flat) == len(set(flat)) == len(users)
    assert set(flat) == set(users)


def test_an_identity_keeps_its_code_and_a_missing_pool_is_empty(tmp_path: Path) -> None:
    _write(tmp_path, FCODE_HOLDERS, 1)
    pool = Pool(tmp_path, FCODE_HOLDERS, processes=2, wrap=False)
    assert pool.take() == Identity("user-0", "token-user-0", "CODE0")
    assert pool.take() is None
    assert len(Pool(tmp_path, "nobody", processes=2, wrap=True)) == 0
    assert Pool(tmp_path, "nobody", processes=2, wrap=True).take() is None


def test_blocks_are_small_enough_for_a_small_pool_to_go_round() -> None:
    assert block_size(25, 2) == 1  # 25 F-codes, 2 workers: one code at a time
    assert block_size(0, 4) == 1
    assert block_size(1_000_000, 1) == 32
    assert block_size(200, 3) == 8


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_each_bot_owns_a_fixed_set_of_accounts_no_other_has(tmp_path: Path, processes: int) -> None:
    """A bot keeps its accounts for the whole sale (a fresh one whenever it is told to wait
    would be collecting tickets): its own, none shared, none handed out again."""
    users = _write(tmp_path, BOT_ACCOUNTS, 23)
    pools = [Pool(tmp_path, BOT_ACCOUNTS, processes=processes, wrap=False)
             for _ in range(processes)]  # fmt: skip
    rng = random.Random(processes)
    owned = [pools[rng.randrange(processes)].take_own(5) for _ in range(4)]
    assert [len(accounts) for accounts in owned] == [5, 5, 5, 5]
    flat = [a.user for accounts in owned for a in accounts]
    assert len(set(flat)) == 20
    assert flat == users[:20]  # in the pool's order, block by block
    # the fifth bot finds three left, a sixth none: the pool never wraps for bots
    assert [a.user for a in pools[0].take_own(5)] == users[20:]
    assert pools[-1].take_own(5) == []
    assert sum(p.taken for p in pools) == 23
    assert all(p.reused == 0 for p in pools)


def test_bots_accounts_are_shared_out_between_processes(tmp_path: Path) -> None:
    users = _write(tmp_path, BOT_ACCOUNTS, 300)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_own, args=(str(tmp_path), out)) for _ in range(3)]
    for p in procs:
        p.start()
    shares = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    flat = [u for share in shares for bot in share for u in bot]
    assert sorted(flat) == sorted(users)
    assert all(len(bot) == 20 for share in shares for bot in share)


def _own(pool_dir: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    pool = Pool(pool_dir, BOT_ACCOUNTS, processes=3, wrap=False)
    out.put([[a.user for a in pool.take_own(20)] for _ in range(5)])
