"""Repairs for the findings marked repairable. Each is idempotent: PostgreSQL is written
through the versioned upsert, Redis through compare-and-set scripts that leave alone whatever
moved since it was read. Running a repair twice, or on a sale that changed meanwhile, does no
harm; reconcile reads again afterwards and reports what is left."""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from flashsale.engine.keys import SaleKeys
from flashsale.engine.scripts import Scripts
from flashsale.reconcile.checks import Report, expected_counters, expected_holders
from flashsale.reconcile.snapshot import RedisSide
from flashsale.store.dead_letters import PERMANENT_ERRORS, describe
from flashsale.store.orders import OrderRow, upsert_orders

_STATE_OF_LETTER = {"a": "issued", "u": "redeemed", "r": "revoked"}


async def repair(
    report: Report,
    redis: Redis,
    scripts: Scripts,
    keys: SaleKeys,
    conn: asyncpg.Connection,
    side: RedisSide,
) -> list[str]:
    """Apply the repairs of ``report``; what was done, one line each."""
    done: list[str] = []
    for finding in report.findings:
        if not finding.repairable:
            continue
        if finding.kind == "postgres_behind":
            done += await _write_orders(conn, [side.orders[o] for o in finding.items])
        elif finding.kind == "units_differ":
            triples: list[str | int] = []
            for name, value in expected_counters(side).items():
                triples += [name, side.sale.get(name, ""), value]
            ok = await scripts.repair_counters(redis, [keys.sale], triples)
            done.append("set the unit counters from the orders" if ok
                        else "unit counters moved meanwhile: left alone")  # fmt: skip
        elif finding.kind == "holders_differ":
            expected = expected_holders(side)
            triples = []
            for user in finding.items:
                triples += [user, side.holders.get(user, 0), expected.get(user, 0)]
            n = await scripts.repair_holders(redis, [keys.holders], triples)
            done.append(f"set the held units of {n} of {len(finding.items)} shopper(s)")
        elif finding.kind in ("deadline_missing", "deadline_stale"):
            changed = 0
            for start in range(0, len(finding.items), 500):
                ids = list(finding.items[start : start + 500])
                changed += await scripts.repair_deadlines(
                    redis, [keys.deadlines, *(keys.order(o) for o in ids)], ids
                )
            done.append(f"{finding.kind}: {changed} deadline entr(ies) put right")
        elif finding.kind == "fcode_state_differs":
            rows = []
            for digest in finding.items:
                state, _, order_id, _ = [*side.fcodes[digest].split("|"), "", "", ""][:4]
                redeemer = side.orders[order_id].user_id if order_id in side.orders else None
                rows.append((digest, _STATE_OF_LETTER[state], order_id or None, redeemer))
            await conn.executemany(
                "UPDATE fcodes SET state = $2, order_id = coalesce($3, order_id),"
                " redeemed_by = coalesce($4, redeemed_by) WHERE digest = $1",
                rows,
            )
            done.append(f"set the state of {len(rows)} F-code(s) in PostgreSQL from Redis")
    return done


async def _write_orders(conn: asyncpg.Connection, rows: list[OrderRow]) -> list[str]:
    """Write Redis's orders to PostgreSQL; one it refuses for good (as the writer's dead letters)
    is reported, not allowed to stop the others."""
    try:
        await upsert_orders(conn, rows)
        return [f"wrote {len(rows)} order(s) from Redis to PostgreSQL"]
    except PERMANENT_ERRORS:
        pass
    refused: list[str] = []
    for row in rows:
        try:
            await upsert_orders(conn, [row])
        except PERMANENT_ERRORS as exc:
            refused.append(f"PostgreSQL refused order {row.order_id}: {describe(exc)}")
    return [f"wrote {len(rows) - len(refused)} order(s) from Redis to PostgreSQL", *refused]
