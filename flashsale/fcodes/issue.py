"""Issuing F-codes: a campaign's codes are made in memory, stored in PostgreSQL in one
transaction, then loaded into Redis.

PostgreSQL is the record. A campaign whose transaction committed exists even when loading it
into Redis was interrupted: ``flashsale fcodes load`` completes it, and loading is idempotent
(HSETNX: a code already in Redis keeps its state). A campaign name is taken once per sale, so
running the same issue twice never makes a second set of codes.

Only digests are stored; the plain codes exist in the caller's hands alone (the CSV file or the
HTTP answer), each beside its ``code_ref`` (see :func:`codes.code_ref`), which exports show.

Codes that could never buy are not issued: for a sale that is closed or has ended (the F-code
window runs from ``fcode_opens_at`` to the end, or to ``fcode_release_at``), or that sets no
units aside for F-codes.
Codes that may well not buy are issued with a warning: more usable codes than F-code units
left, a paused sale, users who already hold a code of the sale.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import NamedTuple

import asyncpg

from flashsale import errors
from flashsale.auth import USER_ID_RULE, is_user_id
from flashsale.engine.engine import Engine
from flashsale.fcodes import codes
from flashsale.models import SaleState, SaleView, iso
from flashsale.store import sales as sale_store

log = logging.getLogger(__name__)

CAMPAIGN_RE = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,63}\Z")
MAX_CODES = 10_000_000
LOAD_BATCH = 3000  # codes per load_fcodes call
LOAD_CONCURRENCY = 4  # calls in flight
_GENERATE_CHUNK = 50_000
_COPY_CHUNK = 100_000

_USERS_NAMED = 3  # users named in a warning about users who hold a code already


class IssuedCode(NamedTuple):
    code: str  # formatted, as shown to people
    code_ref: str  # the reference exports show (the code itself is never stored)
    user: str  # the bound user, "" for a bearer code


@dataclass(slots=True)
class Issued:
    """What an issue made: the codes (shown this once), the warnings, codes added to Redis."""

    codes: list[IssuedCode]
    warnings: list[str] = field(default_factory=list)
    added_to_redis: int = 0


#: ``progress(phase, done, total)``, phase one of "generate", "postgres", "redis"
Progress = Callable[[str, int, int], None]
#: called with the codes once made, before anything is stored
OnGenerated = Callable[[list[IssuedCode]], None]
#: called with each warning as soon as it is known
OnWarning = Callable[[str], None]


class LoadIncomplete(errors.Unavailable):
    """The campaign is stored in PostgreSQL but not (wholly) loaded into Redis."""


def load_command(sale_id: str, campaign: str) -> str:
    return f"flashsale fcodes load {sale_id} --campaign {campaign}"


def check_campaign(campaign: str) -> None:
    if not CAMPAIGN_RE.match(campaign):
        raise errors.InvalidRequest(
            "a campaign name is 1 to 64 lower-case letters, digits, '_' and '-', "
            "starting with a letter or digit"
        )


def check_users(users: Sequence[str]) -> None:
    """Each a user id, none twice; an error names the (0-based) position of the culprit."""
    seen: dict[str, int] = {}
    for i, user in enumerate(users):
        if not is_user_id(user):
            raise errors.InvalidRequest(f"bind_users[{i}]: {USER_ID_RULE}: {user[:80]!r}")
        if (first := seen.setdefault(user, i)) != i:
            raise errors.InvalidRequest(
                f"bind_users[{i}]: user {user[:80]!r} is listed twice (first at [{first}]): "
                "one code per user"
            )


async def check_sale(pool: asyncpg.Pool, engine: Engine, sale_id: str) -> SaleView:
    """The sale exists in PostgreSQL and is armed in Redis: its view in Redis."""
    if await sale_store.fetch_sale(pool, sale_id) is None:
        raise errors.SaleNotFound(f"no sale {sale_id!r} in PostgreSQL")
    try:
        return await engine.get_sale(sale_id)
    except errors.SaleNotFound:
        raise errors.SaleNotFound(
            f"sale {sale_id!r} is in PostgreSQL but not armed in Redis (key prefix "
            f"{engine.keys.prefix!r}): arm it before issuing codes"
        ) from None


async def refuse_useless(engine: Engine, view: SaleView) -> None:
    """Codes of this sale could never buy anything: a closed or ended sale (the F-code window
    ends with the sale), one without F-code units (``fcode_stock`` is fixed at creation), or
    one whose F-code units passed to the public (``fcode_release_at``)."""
    d = view.definition
    seconds, micros = await engine.redis.time()
    now_ms = seconds * 1000 + micros // 1000
    nothing = "its codes could never buy anything; nothing was issued"
    if view.state is SaleState.CLOSED:
        raise errors.SaleEnded(f"sale {d.sale_id!r} is closed: {nothing}")
    if now_ms >= d.ends_ms:
        raise errors.SaleEnded(f"sale {d.sale_id!r} ended at {iso(d.ends_ms)}: {nothing}")
    if d.fcode_stock == 0:
        raise errors.Conflict(
            f"sale {d.sale_id!r} sets no units aside for F-codes (its fcode_stock is 0): "
            f"{nothing}. F-code units are set when a sale is created (fcode_stock)"
        )
    if d.fcode_release_ms is not None and now_ms >= d.fcode_release_ms:
        raise errors.FcodeLaneClosed(
            f"sale {d.sale_id!r} passed its F-code units to the public at "
            f"{iso(d.fcode_release_ms)} (fcode_release_at): {nothing}"
        )


async def warnings_for(
    pool: asyncpg.Pool, view: SaleView, count: int, bind_users: Sequence[str] | None
) -> list[str]:
    """What makes codes about to be issued likely not to buy: more usable codes than F-code
    units left, a paused sale, users who already hold a code of the sale."""
    d, sale_id = view.definition, view.definition.sale_id
    found: list[str] = []
    if view.state is SaleState.PAUSED:
        found.append(f"sale {sale_id!r} is paused: its codes buy nothing until it is resumed")
    usable: int = await pool.fetchval(
        "SELECT count(*) FROM fcodes WHERE sale_id = $1 AND state = 'issued'", sale_id
    )
    left = view.counters.fcode_available
    if count + usable > left:
        earlier = f" and {usable:,} unused from earlier campaigns" if usable else ""
        if left == 0:
            found.append(
                f"no F-code unit of sale {sale_id!r} is left (all {d.fcode_stock:,} are sold "
                f"or reserved): these {count:,} codes{earlier} can only buy units that come "
                "back from expired or cancelled F-code orders"
            )
        else:
            found.append(
                f"{count:,} codes{earlier} for {left:,} F-code unit(s) left of "
                f"{d.fcode_stock:,}: at most {left:,} of them can buy; the others will be "
                "answered sold_out"
            )
    if bind_users:
        rows = await pool.fetch(
            "SELECT f.bound_user, f.campaign FROM fcodes f "
            "JOIN unnest($2::text[]) AS u(id) ON f.bound_user = u.id "
            "WHERE f.sale_id = $1 AND f.state <> 'revoked'",
            sale_id, list(bind_users),
        )  # fmt: skip
        holders = dict.fromkeys(r["bound_user"] for r in rows)
        if holders:
            named = ", ".join(f"{r['bound_user']!r} ({r['campaign']})" for r in rows[:_USERS_NAMED])
            more = ", ..." if len(holders) > _USERS_NAMED else ""
            found.append(
                f"{len(holders):,} of the users already hold a code of sale {sale_id!r} "
                f"that is not revoked: {named}{more}; they get another one"
            )
    return found


async def issue_campaign(
    pool: asyncpg.Pool,
    engine: Engine,
    key: bytes,
    sale_id: str,
    campaign: str,
    *,
    count: int | None = None,
    bind_users: list[str] | None = None,
    progress: Progress | None = None,
    on_generated: OnGenerated | None = None,
    on_warning: OnWarning | None = None,
) -> Issued:
    """Issue a campaign of ``count`` bearer codes, or one code bound to each of ``bind_users``.

    Raises :class:`errors.CampaignExists` when the campaign was issued for this sale before,
    :class:`errors.SaleEnded` or :class:`errors.Conflict` when its codes could never buy (see
    :func:`refuse_useless`; nothing changes then), and :class:`LoadIncomplete` when the codes
    are stored but not all in Redis yet."""
    check_campaign(campaign)
    if bind_users is not None:
        check_users(bind_users)
        if count is not None and count != len(bind_users):
            raise errors.InvalidRequest(
                f"count ({count}) must equal the number of users to bind ({len(bind_users)})"
            )
        count = len(bind_users)
    if count is None or not 1 <= count <= MAX_CODES:
        raise errors.InvalidRequest(f"count must be between 1 and {MAX_CODES}")
    view = await check_sale(pool, engine, sale_id)
    await _refuse_existing(pool, sale_id, campaign)
    await refuse_useless(engine, view)
    result = Issued(codes=[])
    for warning in await warnings_for(pool, view, count, bind_users):
        result.warnings.append(warning)
        if on_warning is not None:
            on_warning(warning)
        else:
            log.warning("campaign %s: %s", campaign, warning)

    started = time.perf_counter()
    made, digests = _generate(key, count, progress)
    users = bind_users if bind_users is not None else [""] * count
    result.codes = [
        IssuedCode(c, codes.code_ref(d), u) for c, d, u in zip(made, digests, users, strict=True)
    ]
    log.info("campaign %s: generate %d codes: %.2f s", campaign, count, _since(started))
    if on_generated is not None:
        on_generated(result.codes)

    started = time.perf_counter()
    await _store(pool, sale_id, campaign, digests, bind_users, progress)
    log.info("campaign %s: postgres (one transaction): %.2f s", campaign, _since(started))

    started = time.perf_counter()
    try:
        added = await load_available(engine, sale_id, campaign, digests, users, progress)
        await _mark_loaded(pool, sale_id, campaign)
    except Exception as exc:
        raise LoadIncomplete(
            f"campaign {campaign!r} is stored in PostgreSQL but loading it into Redis failed "
            f"({exc!r}); run `{load_command(sale_id, campaign)}`"
        ) from exc
    log.info("campaign %s: redis (%d added): %.2f s", campaign, added, _since(started))
    result.added_to_redis = added
    return result


async def load_campaign_from_postgres(
    pool: asyncpg.Pool,
    engine: Engine,
    sale_id: str,
    campaign: str,
    progress: Progress | None = None,
) -> int:
    """(Re)load a campaign's codes from PostgreSQL into Redis; the number added now.

    A code already in Redis keeps its state. A missing one is added in its PostgreSQL state:
    issued -> usable, redeemed -> used (by its order), revoked -> revoked. PostgreSQL learns of
    redemptions from the order writer, so it may lag Redis by a moment: fields that survived in
    Redis are therefore never overwritten."""
    row = await pool.fetchrow(
        "SELECT issued FROM fcode_campaigns WHERE sale_id = $1 AND campaign = $2",
        sale_id, campaign,
    )  # fmt: skip
    if row is None:
        raise errors.NotFound(f"no F-code campaign {campaign!r} for sale {sale_id!r}")
    await check_sale(pool, engine, sale_id)
    rows = await pool.fetch(
        "SELECT digest, coalesce(bound_user, '') AS u, state, coalesce(order_id, '') AS o "
        "FROM fcodes WHERE sale_id = $1 AND campaign = $2",
        sale_id, campaign,
    )  # fmt: skip
    usable = [r for r in rows if r["state"] == "issued"]
    added = await load_available(
        engine, sale_id, campaign, [r["digest"] for r in usable], [r["u"] for r in usable],
        progress,
    )  # fmt: skip
    others = [r for r in rows if r["state"] != "issued"]
    fcodes_key = engine.keys.sale(sale_id).fcodes
    for start in range(0, len(others), LOAD_BATCH):
        pipe = engine.redis.pipeline(transaction=False)
        for r in others[start : start + LOAD_BATCH]:
            state = "r" if r["state"] == "revoked" else "u"
            _ = pipe.hsetnx(fcodes_key, r["digest"], f"{state}|{campaign}|{r['o']}|{r['u']}")
        added += sum(int(x) for x in await pipe.execute())
    await _mark_loaded(pool, sale_id, campaign)
    log.info("campaign %s: %d of %d codes added to Redis", campaign, added, len(rows))
    return added


async def load_available(
    engine: Engine,
    sale_id: str,
    campaign: str,
    digests: Sequence[str],
    users: Sequence[str],
    progress: Progress | None = None,
) -> int:
    """Add usable codes with ``load_fcodes``: batches of :data:`LOAD_BATCH`, a few in flight."""
    total = len(digests)
    keys = [engine.keys.sale(sale_id).fcodes]
    starts = iter(range(0, total, LOAD_BATCH))
    added = done = 0

    async def worker() -> None:
        nonlocal added, done
        for start in starts:  # one iterator shared by the workers: each batch taken once
            end = start + LOAD_BATCH
            args: list[str | int | float] = [
                x
                for d, u in zip(digests[start:end], users[start:end], strict=True)
                for x in (d, campaign, u)
            ]
            # awaited first: ``added += await ...`` would read ``added`` before the await and
            # lose what the other workers added meanwhile
            now_added = int(await engine.scripts.load_fcodes(engine.redis, keys, args))
            added += now_added
            done += len(args) // 3
            if progress is not None:
                progress("redis", done, total)

    async with asyncio.TaskGroup() as group:
        for _ in range(LOAD_CONCURRENCY):
            group.create_task(worker())
    return added


def _generate(key: bytes, count: int, progress: Progress | None) -> tuple[list[str], list[str]]:
    new_code, digest = codes.new_code, codes.digest
    made: list[str] = []
    digests: list[str] = []
    for start in range(0, count, _GENERATE_CHUNK):
        chunk = [new_code() for _ in range(min(_GENERATE_CHUNK, count - start))]
        made += chunk
        # a formatted code is its normalized form with hyphens between the groups
        digests += [digest(key, c.replace("-", "")) for c in chunk]
        if progress is not None:
            progress("generate", len(made), count)
    return made, digests


async def _refuse_existing(pool: asyncpg.Pool, sale_id: str, campaign: str) -> None:
    row = await pool.fetchrow(
        "SELECT issued, created_at, loaded_at FROM fcode_campaigns "
        "WHERE sale_id = $1 AND campaign = $2",
        sale_id, campaign,
    )  # fmt: skip
    if row is None:
        return
    if row["loaded_at"] is None:
        raise errors.CampaignExists(
            f"campaign {campaign!r} of sale {sale_id!r} was issued ({row['issued']} codes, "
            f"{row['created_at']:%Y-%m-%d %H:%M:%S %Z}) but never completely loaded into Redis: "
            f"run `{load_command(sale_id, campaign)}`; its codes are in the CSV of that run"
        )
    raise errors.CampaignExists(
        f"campaign {campaign!r} of sale {sale_id!r} was issued already ({row['issued']} codes, "
        f"{row['created_at']:%Y-%m-%d %H:%M:%S %Z}); choose another campaign name"
    )


async def _store(
    pool: asyncpg.Pool,
    sale_id: str,
    campaign: str,
    digests: list[str],
    bind_users: list[str] | None,
    progress: Progress | None,
) -> None:
    total = len(digests)
    async with pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO fcode_campaigns (sale_id, campaign, issued) VALUES ($1, $2, $3)",
                sale_id, campaign, total,
            )  # fmt: skip
        except asyncpg.UniqueViolationError:  # issued meanwhile by someone else
            raise errors.CampaignExists(
                f"campaign {campaign!r} of sale {sale_id!r} was issued already"
            ) from None
        for start in range(0, total, _COPY_CHUNK):
            end = start + _COPY_CHUNK
            bound = bind_users[start:end] if bind_users is not None else repeat(None)
            await conn.copy_records_to_table(
                "fcodes",
                records=zip(digests[start:end], repeat(sale_id), repeat(campaign), bound),
                columns=["digest", "sale_id", "campaign", "bound_user"],
            )
            if progress is not None:
                progress("postgres", min(end, total), total)


async def _mark_loaded(pool: asyncpg.Pool, sale_id: str, campaign: str) -> None:
    await pool.execute(
        "UPDATE fcode_campaigns SET loaded_at = now() WHERE sale_id = $1 AND campaign = $2",
        sale_id, campaign,
    )  # fmt: skip


def _since(started: float) -> float:
    return time.perf_counter() - started
