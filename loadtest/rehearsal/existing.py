"""Rehearsing a sale the operator created (``--sale-id`` on a running service, ``--service``).

The sale is read through the admin API (its stock, lanes, limit, admission, times); its booked
shoppers from PostgreSQL's bookings (as ``flashsale bookings export`` writes them), and the
crowd's tokens are minted for them (with the service's ``FLASHSALE_TOKEN_SECRET``); its F-codes
only from the file ``flashsale fcodes issue --out`` wrote (``--fcodes``): PostgreSQL keeps only
their keyed hashes. Nothing of the sale is changed before the crowd comes, and nothing is
deleted after it: it is the operator's.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import math
import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from flashsale.auth import issue_token
from loadtest.pools import BOT_ACCOUNTS, BUYERS, POLLERS, WALK_INS, write_pool
from loadtest.rehearsal.api import Api
from loadtest.rehearsal.identities import TOKEN_TTL_S, choose_bookers, write_fcode_pool
from loadtest.rehearsal.options import Sizes


@dataclass
class ExistingSale:
    sale: dict[str, Any]  # GET /v1/admin/sales/{id}
    bookings: int  # in PostgreSQL
    lottery_seed: str | None
    fcodes: list[tuple[str, str]] = field(default_factory=list)  # (code, holder)
    campaign: str = ""
    cannot: list[str] = field(default_factory=list)  # what this rehearsal cannot do with it

    @property
    def sale_id(self) -> str:
        return str(self.sale["sale_id"])

    @property
    def opens_at(self) -> float:
        return datetime.fromisoformat(self.sale["starts_at"].replace("Z", "+00:00")).timestamp()

    @property
    def booking_required(self) -> bool:
        return bool(self.sale.get("booking_required"))

    @property
    def admission(self) -> str:
        return str(self.sale.get("admission") or "arrival")


async def _read_store(database_url: str, sale_id: str) -> tuple[int, str | None]:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        bookings = await conn.fetchval("SELECT count(*) FROM bookings WHERE sale_id = $1", sale_id)
        # the lottery's seed is secret until the draw; the operator's database holds it
        seed = await conn.fetchval("SELECT lottery_seed FROM sales WHERE sale_id = $1", sale_id)
        return int(bookings), seed
    finally:
        await conn.close()


async def _users_by_booking_no(database_url: str, sale_id: str, numbers: list[int]) -> list[str]:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT booking_no, user_id FROM bookings WHERE sale_id = $1 "
            "AND booking_no = ANY($2::int[])",
            sale_id,
            numbers,
        )
    finally:
        await conn.close()
    users = {r["booking_no"]: r["user_id"] for r in rows}
    return [users[n] for n in numbers if n in users]


def read_fcodes(path: Path, sale_id: str) -> tuple[list[tuple[str, str]], str, list[str]]:
    """The codes of ``sale_id`` in an ``issue --out`` file (code, code_ref, user, campaign,
    sale_id), with their holders (a code bound to a user is held by that user, else by a
    made-up fan): (codes, their campaign, notes). One campaign: the crowd checks each F-code
    order's campaign against it; the file's largest one for this sale is taken."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.DictReader(f) if r.get("code")]
    if rows and "sale_id" not in rows[0]:
        raise ValueError(f"{path}: not a `flashsale fcodes issue --out` file (no sale_id column)")
    mine = [r for r in rows if r["sale_id"] == sale_id]
    notes = []
    if len(mine) < len(rows):
        notes.append(f"{len(rows) - len(mine):,} code(s) of {path} are for other sales")
    by_campaign: dict[str, list[dict[str, str]]] = {}
    for r in mine:
        by_campaign.setdefault(r.get("campaign", ""), []).append(r)
    if not by_campaign:
        return [], "", notes
    campaign = max(by_campaign, key=lambda c: len(by_campaign[c]))
    if len(by_campaign) > 1:
        others = ", ".join(c for c in by_campaign if c != campaign)
        notes.append(f"only campaign {campaign} is used; left out: {others}")
    codes = [
        (r["code"], r.get("user") or f"fcode-fan-{i}") for i, r in enumerate(by_campaign[campaign])
    ]
    return codes, campaign, notes


def read_existing(
    api: Api, database_url: str, sale_id: str, fcodes_file: str | None
) -> ExistingSale:
    sale = api.call("GET", f"/v1/admin/sales/{sale_id}")["sale"]
    if sale["status"] in ("sold_out", "ended"):
        raise RuntimeError(f"sale {sale_id} is {sale['status']}: there is nothing to rehearse")
    if sale.get("control") == "closed":
        raise RuntimeError(f"sale {sale_id} is closed: there is nothing to rehearse")
    bookings, seed = asyncio.run(_read_store(database_url, sale_id))
    e = ExistingSale(sale=sale, bookings=bookings, lottery_seed=seed)
    if fcodes_file:
        e.fcodes, e.campaign, notes = read_fcodes(Path(fcodes_file), sale_id)
        e.cannot += notes
        if not e.fcodes:
            e.cannot.append(f"{fcodes_file} holds no code of sale {sale_id}")
    if sale.get("fcode_stock") and not e.fcodes:
        e.cannot.append(
            f"F-codes: its {sale['fcode_stock']:,} F-code unit(s) cannot be bought without the "
            "codes (--fcodes FILE, the CSV `flashsale fcodes issue --out` wrote: PostgreSQL "
            "keeps only their hashes)"
            + ("; they pass to the public at its fcode_release_at" if sale.get("fcode_release_at")
               else "")
        )  # fmt: skip
    if e.admission == "lottery" and seed is None:
        e.cannot.append("the lottery's draw order is not known: the crowd comes in booking order")
    if sale["status"] != "scheduled":
        e.cannot.append(
            f"the sale is {sale['status']} already: the crowd comes now, its opening second is "
            "not rehearsed"
        )
    e.cannot.append(
        "bookings: the crowd is the sale's own booked shoppers; no booking is added"
        + ("" if e.booking_required else ", and shoppers made up here (booking not required)")
    )
    e.cannot.append(
        "the sale is the operator's: nothing of it is deleted afterwards (the orders, payments "
        "and events the crowd made stay)"
    )
    return e


def existing_sizes(e: ExistingSale, args: argparse.Namespace) -> Sizes:
    stock, fcode_stock = int(e.sale["stock"]), int(e.sale.get("fcode_stock") or 0)
    codes = len(e.fcodes)
    pollers = min(e.bookings // 10, max(200, args.users * 5))
    wanted = math.ceil((stock - fcode_stock) * 1.5) + args.users * 20
    booked_buyers = max(0, min(e.bookings - pollers, wanted))
    buyers = booked_buyers if e.booking_required else wanted
    bot_users = min(args.bots if args.bots is not None else args.users // 20, args.users // 4)
    bookings_left = max(0, e.bookings - pollers - booked_buyers)  # not in the crowd yet
    return Sizes(
        fcode_stock=fcode_stock,
        codes=codes,
        buyers=buyers,
        no_shows=0,
        pollers=pollers,
        walk_ins=(math.ceil(buyers * args.walk_in_share * 2) + 10) if e.booking_required else 0,
        fcode_users=min(codes, max(1, args.users // 20)) if codes else 0,
        bot_users=bot_users,
        bot_accounts=min(bot_users * args.bot_accounts, bookings_left)
        if e.booking_required
        else bot_users * args.bot_accounts,
    )


def expected_sellout(e: ExistingSale, n: Sizes) -> str | None:
    """Why the crowd should sell the sale out (None: it cannot be expected to)."""
    public = int(e.sale["stock"]) - n.fcode_stock
    if n.fcode_stock and n.codes < n.fcode_stock and not e.sale.get("fcode_release_at"):
        return None  # F-code units nobody holds a code for stay unsold
    if e.booking_required and n.buyers < public:
        return None  # fewer booked shoppers than public units
    return (
        f"{n.buyers:,} shoppers for {public:,} public units, {n.codes:,} F-codes for "
        f"{n.fcode_stock:,} F-code units"
    )


def _tokens(secret: str, users: list[str]) -> Any:
    for user in users:
        yield user, issue_token(secret, user, ttl_s=TOKEN_TTL_S)


def write_existing_pools(
    pool_dir: Path, secret: str, database_url: str, e: ExistingSale, n: Sizes, rng: random.Random
) -> int:
    """Tokens for the sale's booked shoppers the crowd takes (in queue order for a queued
    sale), made-up shoppers when the sale does not require booking, and the F-code holders."""
    pool_dir.mkdir(parents=True, exist_ok=True)
    admission = e.admission if (e.admission != "lottery" or e.lottery_seed) else "booking_order"
    buyers_i: list[int] = []
    pollers_i: list[int] = []
    bots_i: list[int] = []
    if e.bookings:
        booked = dataclasses.replace(n, buyers=min(n.buyers, e.bookings - n.pollers))
        buyers_i, pollers_i, bots_i = choose_bookers(
            admission, e.bookings, booked, rng, e.lottery_seed or ""
        )
    buyers = _booked(database_url, e, buyers_i)
    pollers = _booked(database_url, e, pollers_i)
    bots = _booked(database_url, e, bots_i)
    if not e.booking_required:
        buyers += [f"rehearsal-shopper-{i}" for i in range(max(0, n.buyers - len(buyers)))]
        bots += [f"rehearsal-bot-{i}" for i in range(max(0, n.bot_accounts - len(bots)))]
    minted = write_pool(pool_dir, BUYERS, _tokens(secret, buyers))
    minted += write_pool(pool_dir, POLLERS, _tokens(secret, pollers))
    minted += write_pool(pool_dir, BOT_ACCOUNTS, _tokens(secret, bots))
    walk_ins = [f"rehearsal-walk-in-{i}" for i in range(n.walk_ins)]
    minted += write_pool(pool_dir, WALK_INS, _tokens(secret, walk_ins))
    return minted + write_fcode_pool(pool_dir, secret, e.fcodes)


def _booked(database_url: str, e: ExistingSale, indices: list[int]) -> list[str]:
    """The users of booking numbers ``i + 1``, in that order."""
    if not indices:
        return []
    numbers = [i + 1 for i in indices]
    return asyncio.run(_users_by_booking_no(database_url, e.sale_id, numbers))
