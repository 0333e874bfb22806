"""Re-deriving an opening window's order from its exported ticket list, and checking it.

Anyone holding the list and the seed (published once the window closed) can: the drawn
tickets must be exactly 1..n, in the order the seed gives them; the later tickets must follow
in their arrival order; the digest of the drawn rows must be the one published; and the
seed's SHA-256 must be the commitment published when the sale was created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flashsale.opening import shuffle
from flashsale.opening.export import TicketRow

_SHOWN = 5  # disagreements named in a report


@dataclass
class Verification:
    window_tickets: int
    tickets: int
    digest: str  # of the drawn rows as the file has them
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "window_tickets": self.window_tickets,
            "tickets": self.tickets,
            "ordered_list_sha256": self.digest,
            "checked": self.checked,
            "problems": self.problems,
        }


def verify(
    rows: list[TicketRow],
    seed: str,
    *,
    digest: str | None = None,
    seed_sha256: str | None = None,
    window_tickets: int | None = None,
) -> Verification:
    """Check ``rows`` (as exported) against ``seed`` and, when given, the published
    ``digest``, ``seed_sha256`` and number of ``window_tickets``."""
    drawn = [r for r in rows if r.drawn]
    later = [r for r in rows if not r.drawn]
    n = len(drawn)
    result = Verification(
        window_tickets=n, tickets=len(rows),
        digest=shuffle.digest((r.rank, r.ticket, r.user_digest) for r in drawn),
    )  # fmt: skip
    problems = result.problems
    if rows[:n] != drawn:
        problems.append("the drawn tickets are not the first rows of the list")
    if window_tickets is not None and n != window_tickets:
        problems.append(f"the list has {n} drawn tickets; {window_tickets} were published")
    if sorted(r.ticket for r in drawn) != list(range(1, n + 1)):
        problems.append(f"the drawn tickets are not exactly the numbers 1 to {n}")
    else:
        order = shuffle.window_order(seed, n)
        wrong = [
            f"rank {r.rank}: ticket {r.ticket}, the seed puts ticket {order[i]} there"
            for i, r in enumerate(drawn)
            if r.rank != i + 1 or r.ticket != order[i]
        ]
        if wrong:
            problems.append(
                f"{len(wrong)} drawn ticket(s) out of the seed's order: "
                + "; ".join(wrong[:_SHOWN])
            )
        else:
            result.checked.append(f"the seed puts the {n} drawn tickets in the list's order")
    late_wrong = [r for i, r in enumerate(later, start=n + 1) if r.rank != i or r.ticket != i]
    if late_wrong:
        first = late_wrong[0]
        problems.append(
            f"{len(late_wrong)} ticket(s) after the window out of arrival order (first: rank "
            f"{first.rank}, ticket {first.ticket})"
        )
    elif later:
        result.checked.append(f"{len(later)} later ticket(s) follow in arrival order")
    if digest is not None:
        if digest.lower() != result.digest:
            problems.append(
                f"the drawn rows' SHA-256 is {result.digest}; {digest.lower()} was published"
            )
        else:
            result.checked.append(f"the drawn rows' SHA-256 is the one published ({digest})")
    if seed_sha256 is not None:
        if shuffle.commitment(seed) != seed_sha256.lower():
            problems.append("the seed's SHA-256 is not the commitment published at the creation")
        else:
            result.checked.append("the seed is the one committed to at the sale's creation")
    return result
