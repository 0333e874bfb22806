"""Looking after issued F-codes: revoke, count per campaign, and check one code for support."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

import asyncpg

from flashsale import errors
from flashsale.engine.engine import Engine
from flashsale.fcodes import codes
from flashsale.store import sales as sale_store

REVOKE_BATCH = 3000
_REVOKE_CONCURRENCY = 4
_REDIS_STATES = {"a": "available", "u": "used", "r": "revoked"}


class RevokeResult(NamedTuple):
    """As Redis counted it: codes revoked by this call, revoked before, and not in the sale."""

    revoked_now: int
    already: int
    unknown: int


async def revoke(
    pool: asyncpg.Pool,
    engine: Engine,
    sale_id: str,
    *,
    digests: Iterable[str] | None = None,
    campaign: str | None = None,
) -> RevokeResult:
    """Revoke codes (by digest) or a whole campaign of a sale, in Redis then in PostgreSQL.

    Redis first: that is what buyers meet. Repeating a revoke is harmless, so one interrupted
    before PostgreSQL was updated is completed by running it again."""
    if (digests is None) == (campaign is None):
        raise ValueError("revoke either digests or a campaign")
    if await sale_store.fetch_sale(pool, sale_id) is None:
        raise errors.SaleNotFound(f"no sale {sale_id!r} in PostgreSQL")
    if campaign is not None:
        if not await pool.fetchval(
            "SELECT 1 FROM fcode_campaigns WHERE sale_id = $1 AND campaign = $2",
            sale_id, campaign,
        ):  # fmt: skip
            raise errors.NotFound(f"no F-code campaign {campaign!r} for sale {sale_id!r}")
        rows = await pool.fetch(
            "SELECT digest FROM fcodes WHERE sale_id = $1 AND campaign = $2", sale_id, campaign
        )
        todo = [r["digest"] for r in rows]
    else:
        todo = list(dict.fromkeys(cast(Iterable[str], digests)))  # once each, in order
    result = await _revoke_in_redis(engine, sale_id, todo)
    if campaign is not None:
        await pool.execute(
            "UPDATE fcodes SET state = 'revoked', revoked_at = now() "
            "WHERE sale_id = $1 AND campaign = $2 AND state <> 'revoked'",
            sale_id, campaign,
        )  # fmt: skip
    else:
        await pool.execute(
            "UPDATE fcodes SET state = 'revoked', revoked_at = now() "
            "WHERE sale_id = $1 AND digest = ANY($2::text[]) AND state <> 'revoked'",
            sale_id, todo,
        )  # fmt: skip
    return result


async def _revoke_in_redis(engine: Engine, sale_id: str, digests: list[str]) -> RevokeResult:
    keys = [engine.keys.sale(sale_id).fcodes]
    starts = iter(range(0, len(digests), REVOKE_BATCH))
    totals = [0, 0, 0]

    async def worker() -> None:
        for start in starts:
            batch: list[str | int | float] = [*digests[start : start + REVOKE_BATCH]]
            counts = await engine.scripts.revoke_fcodes(engine.redis, keys, batch)
            for i in range(3):
                totals[i] += int(counts[i])

    async with asyncio.TaskGroup() as group:
        for _ in range(_REVOKE_CONCURRENCY):
            group.create_task(worker())
    return RevokeResult(*totals)


@dataclass(frozen=True, slots=True)
class CampaignStats:
    campaign: str
    issued: int
    redeemed: int  # redeemed_paid + redeemed_unpaid
    redeemed_paid: int  # its order is paid
    redeemed_unpaid: int  # its order is reserved, awaiting payment
    revoked: int
    available: int  # issued - redeemed - revoked
    created_at: datetime
    loaded_at: datetime | None  # None: not (wholly) loaded into Redis


@dataclass(frozen=True, slots=True)
class FcodeStats:
    sale_id: str
    campaigns: list[CampaignStats]
    fcode_failures: int | None  # refused guesses, from Redis; None when the sale is not armed

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for c in data["campaigns"]:
            for name in ("created_at", "loaded_at"):
                c[name] = None if c[name] is None else c[name].isoformat()
        return data


async def stats(pool: asyncpg.Pool, engine: Engine, sale_id: str) -> FcodeStats:
    """Per campaign of a sale: codes issued, redeemed (their order paid, or not yet), revoked and
    still available (PostgreSQL's view: redemptions and payments arrive through the order
    writer, a moment after Redis)."""
    if await sale_store.fetch_sale(pool, sale_id) is None:
        raise errors.SaleNotFound(f"no sale {sale_id!r} in PostgreSQL")
    rows = await pool.fetch(
        """
        SELECT c.campaign, c.created_at, c.loaded_at, count(f.digest) AS issued,
               count(*) FILTER (WHERE f.state = 'redeemed') AS redeemed,
               count(*) FILTER (WHERE f.state = 'redeemed' AND o.status = 'paid') AS paid,
               count(*) FILTER (WHERE f.state = 'revoked') AS revoked
        FROM fcode_campaigns c LEFT JOIN fcodes f USING (sale_id, campaign)
        LEFT JOIN orders o ON o.order_id = f.order_id
        WHERE c.sale_id = $1
        GROUP BY c.campaign, c.created_at, c.loaded_at
        ORDER BY c.created_at, c.campaign
        """,
        sale_id,
    )
    campaigns = [_campaign_stats(r) for r in rows]
    try:
        failures: int | None = (await engine.get_sale(sale_id)).counters.fcode_failures
    except errors.SaleNotFound:
        failures = None
    return FcodeStats(sale_id=sale_id, campaigns=campaigns, fcode_failures=failures)


def _campaign_stats(r: asyncpg.Record) -> CampaignStats:
    return CampaignStats(
        campaign=r["campaign"],
        issued=r["issued"],
        redeemed=r["redeemed"],
        redeemed_paid=r["paid"],
        redeemed_unpaid=r["redeemed"] - r["paid"],
        revoked=r["revoked"],
        available=r["issued"] - r["redeemed"] - r["revoked"],
        created_at=r["created_at"],
        loaded_at=r["loaded_at"],
    )


async def check(pool: asyncpg.Pool, engine: Engine, key: bytes, code: str) -> dict[str, Any]:
    """Everything known about one code, for support staff. ``result`` is "malformed" (not an
    F-code: a typo), "unknown" (well-formed but never issued here, or issued under another
    key) or "found"."""
    try:
        normalized = codes.normalize(code)
    except codes.MalformedCode as exc:
        return {"result": "malformed", "message": str(exc)}
    d = codes.digest(key, normalized)
    info: dict[str, Any] = {
        "code": codes.format_code(normalized), "code_ref": codes.code_ref(d), "digest": d,
    }  # fmt: skip
    row = await pool.fetchrow(
        "SELECT f.sale_id, f.campaign, f.bound_user, f.state, f.order_id, "
        "o.status AS order_status, f.redeemed_by, f.issued_at, f.redeemed_at, f.revoked_at "
        "FROM fcodes f LEFT JOIN orders o ON o.order_id = f.order_id WHERE f.digest = $1",
        d,
    )
    if row is not None:
        info["result"] = "found"
        info.update({k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()})
        sale_ids = [row["sale_id"]]
    else:
        info["result"] = "unknown"
        sale_ids = await engine.sale_ids()  # Redis may know a code PostgreSQL lost
    pipe = engine.redis.pipeline(transaction=False)
    for sale_id in sale_ids:
        _ = pipe.hget(engine.keys.sale(sale_id).fcodes, d)
    records = cast(list[str | None], await pipe.execute())
    info["redis"] = None
    for sale_id, record in zip(sale_ids, records, strict=True):
        if record is not None:
            state, campaign, order_id, bound = record.split("|", 3)
            info["redis"] = {
                "sale_id": sale_id, "state": _REDIS_STATES.get(state, state),
                "campaign": campaign, "order_id": order_id or None, "bound_user": bound or None,
            }  # fmt: skip
            if row is None:
                info["result"] = "found"
            break
    return info
