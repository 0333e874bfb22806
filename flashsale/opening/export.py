"""The ticket list of an opening window as a file: CSV or JSON lines, written and read back.

One row per ticket, in rank order: ``rank``, ``ticket``, ``user_digest`` (hex, see
shuffle.py) and ``drawn`` (1 / true: a ticket of the window, put in order by the draw; 0 /
false: given after the window, in arrival order). The published digest covers the drawn rows:
SHA-256 of their lines ``<rank>,<ticket>,<user_digest>\\n``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

CSV_HEADER = ("rank", "ticket", "user_digest", "drawn")
FORMATS = ("csv", "jsonl")
_FLUSH_ROWS = 10_000


class BadTicketFile(ValueError):
    """A ticket list that cannot be read: the message names the line."""


@dataclass(frozen=True, slots=True)
class TicketRow:
    rank: int
    ticket: int
    user_digest: str
    drawn: bool


def rows_of(ordered: Iterable[tuple[int, int, str]], window_tickets: int) -> Iterator[TicketRow]:
    """Ordered (rank, ticket, user digest) as rows; the first ``window_tickets`` are drawn."""
    for r, ticket, user in ordered:
        yield TicketRow(r, ticket, user, ticket <= window_tickets)


def render(rows: Iterable[TicketRow], fmt: str) -> Iterator[bytes]:
    """The file, in chunks of many rows."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    if fmt == "csv":
        writer.writerow(CSV_HEADER)
    for count, row in enumerate(rows, start=1):
        if fmt == "csv":
            writer.writerow((row.rank, row.ticket, row.user_digest, int(row.drawn)))
        else:
            text.write(
                json.dumps({"rank": row.rank, "ticket": row.ticket,
                            "user_digest": row.user_digest, "drawn": row.drawn}) + "\n"
            )  # fmt: skip
        if count % _FLUSH_ROWS == 0:
            yield text.getvalue().encode()
            text.seek(0)
            text.truncate()
    yield text.getvalue().encode()


def write(rows: Iterable[TicketRow], fmt: str, out: IO[bytes]) -> None:
    for chunk in render(rows, fmt):
        out.write(chunk)


def read(source: IO[str]) -> list[TicketRow]:
    """A ticket list as ``render`` writes it, CSV or JSON lines (told apart by the first
    character); raises BadTicketFile naming the line."""
    first = source.readline()
    if not first.strip():
        raise BadTicketFile("the file is empty")
    if first.lstrip().startswith("{"):
        return list(_read_jsonl(first, source))
    header = next(csv.reader([first]))
    if tuple(h.strip() for h in header) != CSV_HEADER:
        raise BadTicketFile(f"line 1: expected the header {','.join(CSV_HEADER)}")
    rows = []
    for number, fields in enumerate(csv.reader(source), start=2):
        if not fields:
            continue
        if len(fields) != len(CSV_HEADER):
            raise BadTicketFile(f"line {number}: expected {len(CSV_HEADER)} columns")
        rank, ticket, user, drawn = fields
        if drawn not in ("0", "1"):
            raise BadTicketFile(f"line {number}: drawn must be 0 or 1, not {drawn!r}")
        rows.append(_row(number, rank, ticket, user, drawn == "1"))
    return rows


def _read_jsonl(first: str, source: IO[str]) -> Iterator[TicketRow]:
    lines = iter([first])
    for number, text in enumerate(_chain(lines, source), start=1):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise BadTicketFile(f"line {number}: not JSON") from None
        if not isinstance(value, dict) or not isinstance(value.get("drawn"), bool):
            raise BadTicketFile(f"line {number}: expected an object with rank, ticket, "
                                "user_digest and drawn (true or false)")  # fmt: skip
        yield _row(number, value.get("rank"), value.get("ticket"), value.get("user_digest"),
                   value["drawn"])  # fmt: skip


def _chain(*sources: Iterable[str]) -> Iterator[str]:
    for source in sources:
        yield from source


def _row(number: int, rank: object, ticket: object, user: object, drawn: bool) -> TicketRow:
    try:
        r, t = int(str(rank)), int(str(ticket))
    except ValueError:
        raise BadTicketFile(f"line {number}: rank and ticket must be whole numbers") from None
    if r < 1 or t < 1:
        raise BadTicketFile(f"line {number}: rank and ticket start at 1")
    if not isinstance(user, str) or len(user) != 20 or not _is_hex(user):
        raise BadTicketFile(f"line {number}: user_digest must be 20 hex digits")
    return TicketRow(r, t, user, drawn)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
