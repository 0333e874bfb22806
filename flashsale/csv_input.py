"""Reading the lists people hand in: user ids to book or to bind F-codes to, F-codes to revoke.

A list is one value a line, or a CSV file as a spreadsheet or a CRM exports it:

- UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8"), or UTF-16 with one (Excel's
  "Unicode text"); lines end in LF or CRLF.
- The delimiter is found in the file: comma, semicolon, tab or pipe, whichever splits the first
  line, and most lines of the first :data:`SAMPLE_BYTES`, into the same number (more than one)
  of cells; Excel's ``sep=;`` first line is honoured. Otherwise the file is one value a line
  (a value in double quotes may still hold a comma).
- The first line is a header when a cell of it is a known column name (``user_id``, ``id``,
  ``customer_id``, ``email``, ``code``, ...: :data:`KNOWN_NAMES`; case, spaces and hyphens do
  not matter) or the name asked for with ``column``.
- The column: ``column`` by name (a header cell) or number (1 is the first); otherwise the only
  one, or the one column of the header named as wanted (``user_id`` first). A file of several
  columns without such a header is refused, and the message says how to choose.
- Blank lines are skipped; every other line must have the file's number of cells and a value
  in the column. Surrounding spaces of a value are dropped.

Errors are :class:`ListError`, naming the file, the line and the value. Reading is streamed
(:func:`values`), so a list of millions of lines costs no more than the values kept.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from flashsale.auth import USER_ID_RULE, is_user_id

SAMPLE_BYTES = 64 * 1024  # what the delimiter and the header are decided on
DELIMITERS = (",", ";", "\t", "|")
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_SEP_LINE = re.compile(r"\Asep=(.)\Z", re.IGNORECASE)
_NOT_WORD = re.compile(r"[^0-9a-z]+")


def column_name(cell: str) -> str:
    """A header cell as compared with names: ``"User ID"``, ``"user_id"`` and ``"USERID"`` are
    all ``"userid"``."""
    return _NOT_WORD.sub("", cell.lower())


#: header names of a column of user ids, the preferred first
USER_ID_NAMES = (
    "user_id", "userid", "user", "uid", "id", "customer_id", "customerid", "member_id",
    "memberid", "account_id", "accountid", "shopper_id", "buyer_id",
)  # fmt: skip
#: header names of a column of F-codes
CODE_NAMES = ("code", "fcode", "f_code")
#: other column names that make a first line a header (the exports of flashsale among them)
OTHER_NAMES = frozenset({
    "email", "e_mail", "mail", "email_address", "name", "first_name", "last_name", "full_name",
    "username", "user_name", "login", "nickname", "customer", "member", "account", "phone",
    "phone_number", "mobile", "tel", "telephone", "country", "city", "address", "tier", "level",
    "segment", "tag", "tags", "note", "notes", "created_at", "signup_date", "code_ref",
    "campaign", "sale_id", "bound_user", "state", "order_id", "order_status", "paid",
    "redeemed_by", "redeemed_at", "revoked_at", "issued_at", "booking_no", "booked_at", "source",
    "queue_rank",
})  # fmt: skip
KNOWN_NAMES = frozenset(column_name(n) for n in (*USER_ID_NAMES, *CODE_NAMES, *OTHER_NAMES))


class ListError(ValueError):
    """The list cannot be read as asked, or holds a value that is not what it should be."""


@dataclass(frozen=True, slots=True)
class Layout:
    """How a list file is read: decided once from its first lines."""

    path: Path
    encoding: str
    delimiter: str  # "," for a file of one value a line (quotes are still understood)
    columns: int
    header: tuple[str, ...] | None
    header_line: int | None
    column: int  # 0-based
    data_from: int  # the first line after the header (and a "sep=" line)
    comments: bool  # lines starting with '#' are skipped

    def column_label(self) -> str:
        if self.columns == 1 and self.header is None:
            return "one value a line"
        named = f" {self.header[self.column]!r}" if self.header is not None else ""
        where = f"column {self.column + 1}{named} of {self.columns}"
        if self.columns > 1:
            where += f" ({_DELIMITER_NAMES[self.delimiter]}-separated)"
        return where

    def describe(self, count: int, noun: str) -> str:
        """What was read, for the operator: ``vips.csv: 3 user ids, column 1 'user_id' of 2
        (comma-separated), header on line 1``. ``noun`` is singular: "user id", "code"."""
        text = f"{self.path}: {count:,} {noun}{'' if count == 1 else 's'}, {self.column_label()}"
        if self.header_line is not None:
            text += f", header on line {self.header_line}"
        return text

    def index(self, name: str) -> int | None:
        """The 0-based column a header cell names (as :func:`column_name` compares), if any."""
        if self.header is None:
            return None
        wanted = column_name(name)
        for i, cell in enumerate(self.header):
            if column_name(cell) == wanted:
                return i
        return None

    def to_json(self) -> dict[str, object]:
        return {
            "file": str(self.path),
            "column": self.column + 1,
            "column_name": None if self.header is None else self.header[self.column],
            "columns": self.columns,
            "delimiter": self.delimiter if self.columns > 1 else None,
            "header_line": self.header_line,
        }


def _encoding(path: Path) -> str:
    with path.open("rb") as f:
        start = f.read(4)
    if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # the byte-order mark says which, and is dropped
    return "utf-8-sig"  # a UTF-8 byte-order mark, if any, is dropped


def _blank(cells: list[str]) -> bool:
    return not any(c.strip() for c in cells)


def _records(
    text: Iterator[str] | io.StringIO, delimiter: str, path: Path, comments: bool
) -> Iterator[tuple[int, list[str]]]:
    """(first line number, cells) of each record that is not blank (or a comment)."""
    reader = csv.reader(text, delimiter=delimiter, strict=False)
    line = 1
    try:
        for cells in reader:
            start, line = line, reader.line_num + 1
            if _blank(cells) or (comments and cells[0].lstrip().startswith("#")):
                continue
            yield start, cells
    except csv.Error as exc:
        raise ListError(f"{path}:{line}: not readable as CSV: {exc}") from None
    except UnicodeDecodeError:
        raise _not_text(path) from None


def _not_text(path: Path) -> ListError:
    """The error for a file that is not UTF-8 text, naming its first line that is not."""
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return ListError(
                    f"{path}:{line_no}: not UTF-8 text (byte {exc.start + 1} of the line is "
                    f'{raw[exc.start]:#04x}): save the file as "CSV UTF-8"'
                )
    return ListError(f'{path}: not UTF-8 text: save the file as "CSV UTF-8"')


def _sample(path: Path, encoding: str) -> str:
    with path.open(newline="", encoding=encoding) as f:
        try:
            text = f.read(SAMPLE_BYTES)
        except UnicodeDecodeError:
            raise _not_text(path) from None
        more = f.read(1) != ""
    if more and "\n" in text:
        text = text[: text.rindex("\n") + 1]  # whole lines only
    return text


def _delimiter(sample: str, path: Path, comments: bool) -> tuple[str, int]:
    """The delimiter and the number of columns. A candidate splits the first line into n > 1
    cells and most sampled lines into n too (a stray line is named later, by its number);
    one that splits every line alike is preferred, and csv.Sniffer breaks a tie."""
    found: dict[str, tuple[int, bool]] = {}
    for d in DELIMITERS:
        widths = [len(c) for _, c in _records(io.StringIO(sample), d, path, comments)]
        if not widths or widths[0] < 2:
            continue
        alike = sum(w == widths[0] for w in widths)
        if alike * 2 > len(widths):
            found[d] = (widths[0], alike == len(widths))
    if not found:
        return ",", 1
    best = [d for d, (_, every) in found.items() if every] or list(found)
    if len(best) > 1:
        try:
            sniffed = csv.Sniffer().sniff(sample[:8192], delimiters="".join(DELIMITERS))
        except csv.Error:
            pass
        else:
            if sniffed.delimiter in best:
                return sniffed.delimiter, found[sniffed.delimiter][0]
    return best[0], found[best[0]][0]  # in the order of DELIMITERS


def read_layout(
    path: Path,
    *,
    column: str | None = None,
    wanted: tuple[str, ...] = USER_ID_NAMES,
    what: str = "user ids",
    comments: bool = False,
) -> Layout:
    """Decide how to read ``path`` (see the module's description). ``column`` is a header name
    or a 1-based number; ``wanted`` the header names of the column to take without one, the
    preferred first. Raises :class:`ListError` or :class:`OSError`."""
    encoding = _encoding(path)
    sample = _sample(path, encoding)
    data_from = 1
    forced: str | None = None
    first_line, _, rest = sample.partition("\n")
    if m := _SEP_LINE.match(first_line.rstrip("\r")):
        forced, sample, data_from = m.group(1), rest, 2
    if forced is not None:
        delimiter = forced
        head = next(_records(io.StringIO(sample), forced, path, comments), None)
        columns = 1 if head is None else len(head[1])
    else:
        delimiter, columns = _delimiter(sample, path, comments)
    first = next(_records(io.StringIO(sample), delimiter, path, comments), None)
    if first is None:
        raise ListError(f"{path} lists no {what}")
    first_no, cells = first[0] + data_from - 1, [c.strip() for c in first[1]]

    by_number = column is not None and column.strip().isdigit()
    named: int | None = None
    if column is not None and not by_number:
        wanted_name = column_name(column)
        matches = [i for i, c in enumerate(cells) if column_name(c) == wanted_name]
        if not matches:
            raise ListError(
                f"{path}: no column named {column!r} on line {first_no} "
                f"(it reads {_cells_text(cells)})"
            )
        named = matches[0]
    is_header = named is not None or any(column_name(c) in KNOWN_NAMES for c in cells)
    header = tuple(cells) if is_header else None
    header_line = first_no if is_header else None

    if by_number:
        assert column is not None
        index = int(column) - 1
        if not 0 <= index < columns:
            raise ListError(f"{path}: there is no column {column}: the file has {columns}")
    elif named is not None:
        index = named
    elif columns == 1:
        index = 0
    else:
        index = _wanted_column(path, header, header_line, first_no, cells, wanted, what)
    return Layout(
        path=path, encoding=encoding, delimiter=delimiter, columns=columns, header=header,
        header_line=header_line, column=index,
        data_from=(header_line + 1) if header_line is not None else data_from,
        comments=comments,
    )  # fmt: skip


def _cells_text(cells: list[str] | tuple[str, ...]) -> str:
    shown = ", ".join(repr(c[:40]) for c in cells[:8])
    return shown + (", ..." if len(cells) > 8 else "")


def _wanted_column(
    path: Path,
    header: tuple[str, ...] | None,
    header_line: int | None,
    first_no: int,
    cells: list[str],
    wanted: tuple[str, ...],
    what: str,
) -> int:
    how = "choose one with --column NAME or --column NUMBER (1 is the first)"
    if header is None:
        raise ListError(
            f"{path} has {len(cells)} columns and no header line naming the column of the "
            f"{what} (line {first_no} reads {_cells_text(cells)}): {how}"
        )
    names = [column_name(c) for c in header]
    keys = [column_name(w) for w in wanted]
    candidates = [i for i, n in enumerate(names) if n in keys]
    if len(candidates) > 1 and keys[0] in names:
        candidates = [names.index(keys[0])]
    if len(candidates) == 1:
        return candidates[0]
    which = "several" if candidates else "none"
    raise ListError(
        f"{path}: which column holds the {what}? The header (line {header_line}) has "
        f"{len(header)} columns, {which} of them named as expected "
        f"({', '.join(wanted[:6])}, ...): {_cells_text(header)}; {how}"
    )


def rows(layout: Layout) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells stripped of spaces) of every data line: after the header, blank
    lines skipped. A line with the wrong number of cells is a :class:`ListError`."""
    path, columns, comments = layout.path, layout.columns, layout.comments
    offset = layout.data_from - 1
    with path.open(newline="", encoding=layout.encoding) as f:
        lines: Iterator[str] = iter(f)
        for _ in range(offset):
            next(lines, None)
        reader = csv.reader(lines, delimiter=layout.delimiter)
        line = 1
        try:
            for cells in reader:  # one loop, no generator stacked on it: lists run to millions
                start, line = line, reader.line_num + 1
                if len(cells) == 1:
                    cell = cells[0].strip()
                    if not cell or (comments and cell[0] == "#"):
                        continue
                    cells = [cell]
                else:
                    cells = [c.strip() for c in cells]
                    if not any(cells) or (comments and cells[0].startswith("#")):
                        continue
                if len(cells) != columns:
                    _check_width(layout, start + offset, cells)
                yield start + offset, cells
        except csv.Error as exc:
            raise ListError(f"{path}:{line + offset}: not readable as CSV: {exc}") from None
        except UnicodeDecodeError:
            raise _not_text(path) from None


def _check_width(layout: Layout, line: int, cells: list[str]) -> None:
    """Fewer cells than the header are fine while the column is there (trailing cells left
    out); more are fine only when empty (a trailing delimiter)."""
    if len(cells) <= layout.column or any(cells[layout.columns :]):
        raise ListError(
            f"{layout.path}:{line}: {len(cells)} cells where the file has {layout.columns}"
            f"{_why_cells(layout)}: {_cells_text(cells)}"
        )


def _why_cells(layout: Layout) -> str:
    if layout.columns == 1:
        return " (a value holding a comma must be in double quotes)"
    return ""


def values(
    layout: Layout, what: str, check: Callable[[str], str | None] | None = None
) -> Iterator[tuple[int, str]]:
    """(line number, value) of the layout's column on every data line. An empty value, or one
    for which ``check`` returns a complaint, is a :class:`ListError` naming line and value."""
    column, path = layout.column, layout.path
    for line, cells in rows(layout):
        value = cells[column]
        if not value:
            raise ListError(
                f"{path}:{line}: no {what} in {layout.column_label()}: {_cells_text(cells)}"
            )
        if check is not None and (complaint := check(value)) is not None:
            raise ListError(f"{path}:{line}: {complaint}: {value[:80]!r}")
        yield line, value


def user_id_complaint(value: str) -> str | None:
    return None if is_user_id(value) else USER_ID_RULE


@dataclass(frozen=True, slots=True)
class UserList:
    users: list[str]
    layout: Layout

    def describe(self) -> str:
        return self.layout.describe(len(self.users), "user id")


def read_user_ids(path: Path, column: str | None = None, *, unique: bool = False) -> UserList:
    """The user ids of a list file, every one checked against the rule of
    :func:`flashsale.auth.is_user_id`. ``unique``: a user listed twice is an error naming both
    lines (otherwise repeats are kept). Raises :class:`ListError` or :class:`OSError`."""
    layout = read_layout(path, column=column, wanted=USER_ID_NAMES, what="user ids")
    users: list[str] = []
    seen: dict[str, int] = {}
    for line, user in values(layout, "user id", user_id_complaint):
        if unique and (before := seen.setdefault(user, line)) != line:
            raise ListError(
                f"{path}:{line}: user {user[:80]!r} is listed twice (lines {before} and "
                f"{line}): one code per user"
            )
        users.append(user)
    if not users:
        raise ListError(f"{path} lists no user ids")
    return UserList(users, layout)
