"""``flashsale reconcile``: a sale whose stores agree is clean; every kind of damage is found,
the repairable ones are repaired idempotently, and the others keep the exit code non-zero."""

from __future__ import annotations

from typing import Any

from flashsale.cli.reconcile import reconcile
from flashsale.engine.scripts import LuaScript
from flashsale.reconcile.checks import Report
from tests.helpers import Service, run_flashsale
from tests.test_fcode_redeem import fcode_sale, put_codes


async def _mixed_sale(service: Service) -> tuple[str, dict[str, str]]:
    """A sale with reserved, paid, cancelled and F-code orders, all written to PostgreSQL.
    Returns the sale id and order id -> status."""
    sale = await service.create_sale(**fcode_sale(stock=20, fcode_stock=3, per_user_limit=2))
    sale_id = sale["sale_id"]
    [code] = await put_codes(service, sale_id, 1)
    orders: dict[str, str] = {}
    for i in range(6):
        reply = await service.buy(sale_id, f"r:{i}", {"quantity": 1 + i % 2})
        assert reply.status == 201, reply.body
        orders[reply.body["order"]["order_id"]] = "reserved"
    ids = list(orders)
    assert (await service.pay(ids[0])).body["payment"]["outcome"] == "paid"
    orders[ids[0]] = "paid"
    assert (await service.order_action(ids[1], "r:1", "cancel")).status == 200
    orders[ids[1]] = "cancelled"
    reply = await service.buy(sale_id, "r:fc", {"fcode": code})
    assert reply.status == 201, reply.body
    orders[reply.body["order"]["order_id"]] = "reserved"
    await service.wait_for_postgres(sale_id)
    return sale_id, orders


async def _check(service: Service, sale_id: str, *, repair: bool = False) -> tuple[Report, Any]:
    s = service.services
    return await reconcile(s.pool, s.engine, sale_id, repair=repair)


def _kinds(report: Report) -> set[str]:
    return {f.kind for f in report.findings}


async def test_a_sale_whose_stores_agree_is_clean(service: Service) -> None:
    sale_id, _ = await _mixed_sale(service)
    report, repairs = await _check(service, sale_id, repair=True)
    assert report.clean, report.findings
    assert repairs == []
    text = "\n".join(report.checked)
    for what in ("orders: 7 alike", "units:", "holders:", "deadlines:", "per-user limit",
                 "F-codes: 1 alike"):  # fmt: skip
        assert what in text, text


async def test_postgres_behind_is_found_and_rewritten_from_redis(service: Service) -> None:
    sale_id, orders = await _mixed_sale(service)
    paid = next(o for o, st in orders.items() if st == "paid")
    reserved = next(o for o, st in orders.items() if st == "reserved")
    pool = service.services.pool
    await pool.execute("DELETE FROM orders WHERE order_id = $1", reserved)
    await pool.execute(
        "UPDATE orders SET status = 'reserved', version = 1 WHERE order_id = $1", paid
    )
    report, _ = await _check(service, sale_id)
    [finding] = report.findings
    assert finding.kind == "postgres_behind"
    assert set(finding.items) == {paid, reserved}
    report, repairs = await _check(service, sale_id, repair=True)
    assert report.clean, report.findings
    assert repairs == ["wrote 2 order(s) from Redis to PostgreSQL"]
    row = await pool.fetchrow("SELECT status, version FROM orders WHERE order_id = $1", paid)
    assert (row["status"], row["version"]) == ("paid", 2)
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE order_id = $1", reserved) == 1


async def test_redis_bookkeeping_is_repaired_from_its_orders(service: Service) -> None:
    sale_id, orders = await _mixed_sale(service)
    engine = service.services.engine
    k = engine.keys.sale(sale_id)
    before = await engine.redis.hgetall(k.sale)  # type: ignore[misc]
    reserved = next(o for o, st in orders.items() if st == "reserved")
    paid = next(o for o, st in orders.items() if st == "paid")
    await engine.redis.hincrby(k.sale, "available", 3)  # type: ignore[misc]
    await engine.redis.hincrby(k.holders, "r:3", 5)  # type: ignore[misc]
    await engine.redis.hset(k.holders, "ghost", 1)  # type: ignore[misc]
    await engine.redis.zrem(k.deadlines, reserved)
    await engine.redis.zadd(k.deadlines, {paid: 2**42})  # far off: the sweeper leaves it
    report, _ = await _check(service, sale_id)
    assert _kinds(report) == {
        "units_differ", "holders_differ", "deadline_missing", "deadline_stale",
    }  # fmt: skip
    assert all(f.repairable for f in report.findings)
    report, repairs = await _check(service, sale_id, repair=True)
    assert report.clean, report.findings
    assert len(repairs) == 4, repairs
    after = await engine.redis.hgetall(k.sale)  # type: ignore[misc]
    assert {n: after[n] for n in ("available", "reserved", "paid")} == {
        n: before[n] for n in ("available", "reserved", "paid")
    }
    assert await engine.redis.hget(k.holders, "ghost") is None  # type: ignore[misc]
    assert await engine.redis.zscore(k.deadlines, paid) is None
    assert await engine.redis.zscore(k.deadlines, reserved) is not None
    # a second repair finds nothing to do
    report, repairs = await _check(service, sale_id, repair=True)
    assert report.clean
    assert repairs == []


async def test_repairs_leave_a_sale_that_moved_alone(service: Service) -> None:
    """The counter repair is compare-and-set: values read before a buy are not written after."""
    sale = await service.create_sale(stock=5)
    engine = service.services.engine
    k = engine.keys.sale(sale["sale_id"])
    script = LuaScript.load("repair_counters")
    read = await engine.redis.hget(k.sale, "available")  # type: ignore[misc]
    assert (await service.buy(sale["sale_id"], "m:1")).status == 201
    assert await script(engine.redis, [k.sale], ["available", read, 99]) == 0
    assert await engine.redis.hget(k.sale, "available") == "4"  # type: ignore[misc]
    assert await script(engine.redis, [k.sale], ["available", "4", 4]) == 1


async def test_fcode_state_behind_in_postgres_is_repaired(service: Service) -> None:
    sale_id, _ = await _mixed_sale(service)
    pool = service.services.pool
    await pool.execute("UPDATE fcodes SET state = 'issued', order_id = NULL WHERE sale_id = $1",
                       sale_id)  # fmt: skip
    report, _ = await _check(service, sale_id)
    assert _kinds(report) == {"fcode_state_differs"}
    report, _ = await _check(service, sale_id, repair=True)
    assert report.clean, report.findings
    row = await pool.fetchrow("SELECT state, order_id FROM fcodes WHERE sale_id = $1", sale_id)
    assert row["state"] == "redeemed"
    assert row["order_id"] is not None


async def test_what_redis_lost_is_reported_not_papered_over(service: Service) -> None:
    sale_id, orders = await _mixed_sale(service)
    engine = service.services.engine
    lost = next(o for o, st in orders.items() if st == "cancelled")
    await engine.redis.delete(engine.keys.sale(sale_id).order(lost))
    report, _ = await _check(service, sale_id, repair=True)
    assert not report.clean
    [finding] = report.findings
    assert finding.kind == "order_missing_in_redis"
    assert finding.items == (lost,)
    assert not finding.repairable


async def test_the_command_prints_and_exits_by_the_verdict(service: Service) -> None:
    settings = service.settings
    sale_id, orders = await _mixed_sale(service)
    code, out, err = await run_flashsale(settings, "reconcile", sale_id)
    assert code == 0, out + err
    assert "verdict: Redis and PostgreSQL agree" in out
    pool = service.services.pool
    await pool.execute("DELETE FROM orders WHERE order_id = $1", next(iter(orders)))
    code, out, _ = await run_flashsale(settings, "reconcile", sale_id, "--json")
    assert code == 1
    assert '"kind": "postgres_behind"' in out
    code, out, _ = await run_flashsale(settings, "reconcile", sale_id, "--repair")
    assert code == 0, out
    assert "repaired wrote 1 order(s)" in out
    code, _, err = await run_flashsale(settings, "reconcile", "no-such-sale")
    assert code == 2
    assert "no sale" in err
    code, _, err = await run_flashsale(settings, "reconcile", "Bad Id!")
    assert code == 2
