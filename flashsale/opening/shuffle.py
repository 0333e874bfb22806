"""The opening shuffle: a seeded, reproducible, checkable order of the window's tickets.

Ticket ``t`` of the ``n`` tickets given within the opening window gets the queue rank
``rank(t)``, the permutation of 1..n that the seed picks with the lottery's Feistel network
(flashsale/booking/lottery.py documents it), under its own method name, so that its round
keys are ``SHA-256("flashsale-opening-v1|<seed>|<i>")``. Tickets given after the window keep
their arrival order: ticket ``t > n`` has rank ``t``. Nothing is shuffled in memory: the buy
script computes a ticket's rank when its holder asks, so a million tickets cost the draw
nothing at the window's close.

The seed is secret until the window closes; its SHA-256 is published from the sale's
creation, so nobody (the operator included) can pick a seed after seeing who holds which
ticket. Once the window is closed, the ordered list is published as a digest: SHA-256 of the
lines ``<rank>,<ticket>,<user_digest>\\n`` of the window's tickets, in rank order, which are
exactly the first lines after the header of the exported CSV. ``user_digest`` is the hex of
the 10 bytes a shopper is filed under (engine/keys.py, booking_slot): the first 10 bytes of
BLAKE2b with a 14-byte digest and the personalization ``flashsale-bk``, of the user id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence

from flashsale.booking import lottery

METHOD = "flashsale-opening-v1"


def new_seed() -> str:
    return lottery.new_seed()


def commitment(seed: str) -> str:
    """What is published from the sale's creation: the SHA-256 of the seed, in hex."""
    return lottery.commitment(seed)


def round_keys_csv(seed: str) -> str:
    """The round keys as the buy script reads them (comma-separated)."""
    return ",".join(map(str, lottery.round_keys(seed, METHOD)))


def rank(seed: str, window_tickets: int, ticket: int) -> int:
    """The queue rank of ``ticket``: drawn within the window, arrival order after it."""
    if ticket > window_tickets:
        return ticket
    return lottery.Draw(seed, window_tickets, METHOD).rank(ticket)


def window_order(seed: str, window_tickets: int) -> list[int]:
    """The window's tickets in rank order: ``window_order(...)[r - 1]`` holds rank r."""
    if window_tickets == 0:
        return []
    by_ticket = lottery.Draw(seed, window_tickets, METHOD).ranks()
    order = [0] * window_tickets
    for ticket, r in enumerate(by_ticket, start=1):
        order[r - 1] = ticket
    return order


def line(rank_: int, ticket: int, user_digest: str) -> str:
    """One line of the ordered list, as the digest and the CSV export have it."""
    return f"{rank_},{ticket},{user_digest}\n"


def ordered_rows(
    seed: str, window_tickets: int, holders: Sequence[str]
) -> Iterator[tuple[int, int, str]]:
    """Every ticket as (rank, ticket, user digest), in rank order: the window's as drawn, then
    the later ones by number. ``holders[t - 1]`` is the user digest of ticket t."""
    for r, ticket in enumerate(window_order(seed, window_tickets), start=1):
        yield r, ticket, holders[ticket - 1]
    for ticket in range(window_tickets + 1, len(holders) + 1):
        yield ticket, ticket, holders[ticket - 1]


def digest(rows: Iterable[tuple[int, int, str]]) -> str:
    """SHA-256 (hex) of the ordered list's lines; ``rows`` are the window's, in rank order."""
    h = hashlib.sha256()
    batch: list[str] = []
    for r, ticket, user in rows:
        batch.append(line(r, ticket, user))
        if len(batch) >= 10_000:
            h.update("".join(batch).encode())
            batch.clear()
    h.update("".join(batch).encode())
    return h.hexdigest()
