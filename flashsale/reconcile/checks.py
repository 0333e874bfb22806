"""The comparison: every way Redis and PostgreSQL can disagree about a sale, as findings.

Redis decides (every buy, payment and expiry is one script there); PostgreSQL is the durable
record the order writer keeps in step. So a difference where PostgreSQL is behind is repaired
by writing Redis's state to it again, which the versioned upsert makes idempotent. Redis's own
bookkeeping (counters, holders, deadlines) is checked against its orders, and repaired from
them with compare-and-set scripts that change nothing if the sale moved in between.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from flashsale.reconcile.snapshot import PostgresSide, RedisSide
from flashsale.store.orders import OrderRow

HELD = ("reserved", "paid")
_CODE_STATE = {"a": "issued", "u": "redeemed", "r": "revoked"}  # Redis letter -> PostgreSQL


@dataclass(frozen=True)
class Finding:
    kind: str
    detail: str
    repairable: bool = False
    items: tuple[str, ...] = ()  # what a repair works on (order ids, users, digests)


@dataclass
class Report:
    sale_id: str
    checked: list[str] = field(default_factory=list)  # what was compared and agreed
    findings: list[Finding] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, object]:
        return {
            "sale_id": self.sale_id,
            "clean": self.clean,
            "checked": self.checked,
            "skipped": self.skipped,
            "findings": [
                {
                    "kind": f.kind,
                    "detail": f.detail,
                    "repairable": f.repairable,
                    "items": list(f.items[:20]),
                    "count": len(f.items),
                }
                for f in self.findings
            ],
        }


def compare(sale_id: str, redis: RedisSide, pg: PostgresSide) -> Report:
    report = Report(sale_id)
    if not redis.sale or pg.sale is None:
        where = "Redis" if not redis.sale else "PostgreSQL"
        report.findings.append(Finding("sale_missing", f"the sale is not in {where}"))
        return report
    _stock(report, redis, pg)
    _orders(report, redis, pg)
    if redis.settled:
        _units(report, redis)
        _holders(report, redis)
        _deadlines(report, redis)
    else:
        report.skipped.append(
            "units, holders, deadlines: the sale changed while it was read; run again when quiet"
        )
    _limit(report, redis, pg)
    _fcodes(report, redis, pg)
    _bookings(report, redis, pg)
    _dead_letters(report, redis)
    return report


def _stock(report: Report, redis: RedisSide, pg: PostgresSide) -> None:
    assert pg.sale is not None
    pairs = [("stock", pg.sale["stock"]), ("fcode_stock", pg.sale["fcode_stock"])]
    wrong = [f"{n}: Redis {redis.counter(n)}, PostgreSQL {v}" for n, v in pairs
             if redis.counter(n) != v]  # fmt: skip
    if wrong:
        report.findings.append(Finding("stock_differs", "; ".join(wrong)))
    else:
        report.checked.append(f"stock {pg.sale['stock']} ({pg.sale['fcode_stock']} for F-codes)")


def _orders(report: Report, redis: RedisSide, pg: PostgresSide) -> None:
    behind, missing_in_redis, newer_in_pg, differ = [], [], [], []
    for order_id, r in redis.orders.items():
        p = pg.orders.get(order_id)
        if p is None or p.version < r.version:
            behind.append(order_id)
        elif p.version > r.version:
            newer_in_pg.append(order_id)
        elif _facts(p) != _facts(r):
            differ.append(order_id)
    missing_in_redis = [o for o in pg.orders if o not in redis.orders]
    if behind:
        lag = f" ({redis.events_pending} events still on their way)" if redis.events_pending else ""
        report.findings.append(Finding(
            "postgres_behind",
            f"{len(behind)} order(s) missing or older in PostgreSQL than in Redis{lag}",
            repairable=True, items=tuple(behind),
        ))  # fmt: skip
    if missing_in_redis:
        report.findings.append(Finding(
            "order_missing_in_redis",
            f"{len(missing_in_redis)} order(s) in PostgreSQL that Redis does not hold "
            "(Redis lost writes: restore it, see README's persistence notes)",
            items=tuple(missing_in_redis),
        ))  # fmt: skip
    if newer_in_pg:
        report.findings.append(Finding(
            "postgres_ahead", f"{len(newer_in_pg)} order(s) newer in PostgreSQL than in Redis",
            items=tuple(newer_in_pg),
        ))  # fmt: skip
    if differ:
        report.findings.append(Finding(
            "order_differs", f"{len(differ)} order(s) with the same version but other facts",
            items=tuple(differ),
        ))  # fmt: skip
    if not (behind or missing_in_redis or newer_in_pg or differ):
        report.checked.append(f"orders: {len(redis.orders)} alike in Redis and PostgreSQL")


def _facts(row: OrderRow) -> tuple[object, ...]:
    return (row.user_id, row.quantity, row.status, row.expires_ms, row.created_ms,
            row.updated_ms, row.fcode, row.campaign)  # fmt: skip


def held_units(orders: dict[str, OrderRow]) -> dict[str, int]:
    """Units per lane and status from the orders: public/fcode x reserved/paid."""
    units: Counter[str] = Counter()
    for row in orders.values():
        if row.status in HELD:
            units[f"{'fcode' if row.fcode else 'public'}_{row.status}"] += row.quantity
    return dict(units)


def expected_counters(redis: RedisSide) -> dict[str, int]:
    """The sale hash's unit counters as the orders say they must be. Once the F-code lane has
    been released (fc_lane "closed"), every F-code unit not held by an F-code order has passed
    to the public lane, and ``fcode_released`` counts them."""
    u = held_units(redis.orders)
    public_stock = redis.counter("stock") - redis.counter("fcode_stock")
    reserved = u.get("public_reserved", 0) + u.get("fcode_reserved", 0)
    paid = u.get("public_paid", 0) + u.get("fcode_paid", 0)
    fcode_free = redis.counter("fcode_stock") - u.get("fcode_reserved", 0) - u.get("fcode_paid", 0)
    counters = {
        "reserved": reserved,
        "paid": paid,
        "available": public_stock - u.get("public_reserved", 0) - u.get("public_paid", 0),
        "fcode_available": fcode_free,
    }
    if redis.sale.get("fc_lane") == "closed":
        counters |= {
            "available": counters["available"] + fcode_free,
            "fcode_available": 0,
            "fcode_released": fcode_free,
        }
    return counters


def _units(report: Report, redis: RedisSide) -> None:
    expected = expected_counters(redis)
    wrong = {n: (redis.counter(n), v) for n, v in expected.items() if redis.counter(n) != v}
    if any(v < 0 for v in expected.values()):
        report.findings.append(Finding(
            "oversold", f"the orders hold more units than the stock: {expected}"
        ))  # fmt: skip
    elif wrong:
        text = "; ".join(f"{n} {have} (orders say {want})" for n, (have, want) in wrong.items())
        report.findings.append(Finding("units_differ", text, repairable=True))
    else:
        released = expected.get("fcode_released")
        report.checked.append(
            "units: available {available} + F-code {fcode_available} + reserved {reserved} "
            "+ paid {paid} = stock".format(**expected)
            + ("" if released is None else f" ({released} F-code unit(s) passed to the public)")
        )


def expected_holders(redis: RedisSide) -> dict[str, int]:
    """Each shopper's held units (reserved + paid) as Redis's orders say."""
    return _held_by_user(redis.orders)


def _holders(report: Report, redis: RedisSide) -> None:
    expected = expected_holders(redis)
    users = set(expected) | {u for u, n in redis.holders.items() if n}
    wrong = sorted(u for u in users if redis.holders.get(u, 0) != expected.get(u, 0))
    if wrong:
        report.findings.append(Finding(
            "holders_differ", f"{len(wrong)} shopper(s) whose held units differ from their orders",
            repairable=True, items=tuple(wrong),
        ))  # fmt: skip
    else:
        report.checked.append(f"holders: {len(expected)} shopper(s) match their orders")


def _deadlines(report: Report, redis: RedisSide) -> None:
    reserved = {o: r.expires_ms for o, r in redis.orders.items() if r.status == "reserved"}
    missing = sorted(o for o, ms in reserved.items() if redis.deadlines.get(o) != ms)
    stale = sorted(o for o in redis.deadlines if o not in reserved)
    if missing:
        report.findings.append(Finding(
            "deadline_missing", f"{len(missing)} reservation(s) the sweeper would never expire",
            repairable=True, items=tuple(missing),
        ))  # fmt: skip
    if stale:
        report.findings.append(Finding(
            "deadline_stale", f"{len(stale)} deadline(s) of orders no longer reserved",
            repairable=True, items=tuple(stale),
        ))  # fmt: skip
    if not (missing or stale):
        report.checked.append(f"deadlines: one for each of {len(reserved)} reservation(s)")


def _limit(report: Report, redis: RedisSide, pg: PostgresSide) -> None:
    limit = redis.counter("per_user_limit")
    above = sorted(u for u, n in _held_by_user(pg.orders).items() if n > limit)
    above += sorted(u for u, n in expected_holders(redis).items() if n > limit and u not in above)
    if above:
        report.findings.append(Finding(
            "above_limit", f"{len(above)} shopper(s) hold more than {limit} unit(s)",
            items=tuple(above),
        ))  # fmt: skip
    else:
        report.checked.append(f"per-user limit {limit}: nobody above it")


def _held_by_user(orders: dict[str, OrderRow]) -> dict[str, int]:
    held: Counter[str] = Counter()
    for row in orders.values():
        if row.status in HELD:
            held[row.user_id] += row.quantity
    return dict(held)


def _fcodes(report: Report, redis: RedisSide, pg: PostgresSide) -> None:
    if not redis.fcodes and not pg.fcodes:
        return
    users_of_code: Counter[str] = Counter(
        r.fcode for r in redis.orders.values() if r.fcode and r.status in HELD
    )
    twice = sorted(d for d, n in users_of_code.items() if n > 1)
    if twice:
        report.findings.append(Finding(
            "fcode_used_twice", f"{len(twice)} F-code(s) held by more than one order",
            items=tuple(twice),
        ))  # fmt: skip
    not_loaded = sorted(d for d in pg.fcodes if d not in redis.fcodes)
    unknown = sorted(d for d in redis.fcodes if d not in pg.fcodes)
    behind = []
    for digest, record in redis.fcodes.items():
        row = pg.fcodes.get(digest)
        if row is not None and row["state"] != _CODE_STATE.get(record[:1]):
            behind.append(digest)
    if not_loaded:
        report.findings.append(Finding(
            "fcode_missing_in_redis", f"{len(not_loaded)} issued F-code(s) not in Redis "
            "(a campaign whose loading did not finish: `flashsale fcodes` loads it again)",
            items=tuple(not_loaded),
        ))  # fmt: skip
    if unknown:
        report.findings.append(Finding(
            "fcode_unknown", f"{len(unknown)} F-code(s) in Redis that PostgreSQL never issued",
            items=tuple(unknown),
        ))  # fmt: skip
    if behind:
        report.findings.append(Finding(
            "fcode_state_differs",
            f"{len(behind)} F-code(s) whose state PostgreSQL has not caught up",
            repairable=True, items=tuple(behind),
        ))  # fmt: skip
    if not (twice or not_loaded or unknown or behind):
        report.checked.append(f"F-codes: {len(redis.fcodes)} alike, none used twice")


def _bookings(report: Report, redis: RedisSide, pg: PostgresSide) -> None:
    in_redis = redis.counter("bookings")
    if in_redis == 0 and pg.bookings == 0:
        return
    if in_redis != pg.bookings:
        lag = " (events still on their way)" if redis.events_pending else ""
        report.findings.append(Finding(
            "bookings_differ", f"bookings: Redis {in_redis}, PostgreSQL {pg.bookings}{lag}"
        ))  # fmt: skip
    else:
        report.checked.append(f"bookings: {in_redis} in both")


def _dead_letters(report: Report, redis: RedisSide) -> None:
    letters = redis.dead_letters
    if not letters:
        report.checked.append("dead letters: none")
        return
    first = letters[0]
    what = first.fields.get("order_id") or f"booking {first.fields.get('booking_no', '?')}"
    report.findings.append(Finding(
        "dead_letters",
        f"{len(letters)} event(s) PostgreSQL refused, set aside (first: {what}: {first.reason}); "
        "`flashsale deadletters` lists them and retries them once the cause is fixed",
        items=tuple(letter.fields.get("order_id") or letter.event_id for letter in letters),
    ))  # fmt: skip
