"""``flashsale token``: one shopper token, or many at once for a test crowd.

``flashsale token alice`` prints alice's token. ``--count N`` mints N, for the user ids
``<prefix>1`` to ``<prefix>N``; ``--users FILE`` mints one for each user id of a list (read as
``flashsale bookings import`` reads one: CSV or one a line, ``--column``). Many tokens go to
``--out FILE`` (or stdout) as CSV, ``user_id,token``, with that header; the file is made
readable by its owner alone, since a token is a shopper's key. One process signs them all,
a few microseconds each. Exit codes: 0 done, 2 usage or an unreadable list.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flashsale.settings import Settings

PROG = "flashsale token"
MAX_COUNT = 100_000_000


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("user_id", nargs="?", help="the shopper whose token to print")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    parser.add_argument("--count", type=int, help="mint N tokens, for <prefix>1 .. <prefix>N")
    parser.add_argument("--prefix", default="user-", help="with --count: user ids' prefix")
    parser.add_argument("--users", type=Path, metavar="FILE",
                        help="mint one token per user id of this list")  # fmt: skip
    parser.add_argument("--column", help="with --users: the list's column (name or number)")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="write user_id,token lines here instead of stdout")  # fmt: skip


def _user_ids(args: argparse.Namespace) -> Iterator[str] | str:
    """The user ids asked for, or what is wrong with the arguments."""
    from flashsale.auth import USER_ID_RULE, is_user_id
    from flashsale.csv_input import ListError, read_user_ids

    given = [args.user_id is not None, args.count is not None, args.users is not None]
    if sum(given) != 1:
        return "give one of: a USER_ID, --count N, --users FILE"
    if args.user_id is not None:
        return iter([args.user_id])
    if args.users is not None:
        try:
            users = read_user_ids(args.users, args.column)
        except (ListError, OSError) as exc:
            return str(exc)
        print(f"{PROG}: {users.describe()}", file=sys.stderr)
        return iter(users.users)
    if not 1 <= args.count <= MAX_COUNT:
        return f"--count must be from 1 to {MAX_COUNT:,}"
    longest = f"{args.prefix}{args.count}"
    if not is_user_id(longest) or not is_user_id(f"{args.prefix}1"):
        return f"--prefix makes user ids like {longest!r}: {USER_ID_RULE}"
    return (f"{args.prefix}{i}" for i in range(1, args.count + 1))


def mint_many(args: argparse.Namespace, settings: Settings) -> int:
    if args.ttl < 1:
        print(f"{PROG}: --ttl must be at least 1 second", file=sys.stderr)
        return 2
    users = _user_ids(args)
    if isinstance(users, str):
        print(f"{PROG}: {users}", file=sys.stderr)
        return 2
    if args.out is None:
        _write(sys.stdout, users, settings, args.ttl)
        return 0
    partial = args.out.with_name(args.out.name + ".partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8", newline="") as out:
            written = _write(out, users, settings, args.ttl)
        partial.replace(args.out)
    except OSError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        partial.unlink(missing_ok=True)
        return 2
    print(f"{PROG}: {written:,} token(s) written to {args.out}", file=sys.stderr)
    return 0


def _write(out: IO[str], users: Iterator[str], settings: Settings, ttl_s: int) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("user_id", "token"))
    written = 0
    batch: list[str] = []
    for user in users:
        batch.append(user)
        if len(batch) == 10_000:
            written += _rows(writer, batch, settings.token_secret, ttl_s)
            batch = []
    return written + _rows(writer, batch, settings.token_secret, ttl_s)


def _rows(writer: Any, users: list[str], secret: str, ttl_s: int) -> int:
    from flashsale.auth import issue_tokens

    writer.writerows(zip(users, issue_tokens(secret, users, ttl_s), strict=True))
    return len(users)
