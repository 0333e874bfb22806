"""What the service log tells an operator: a sale opening, selling out, ending, a summary of
each live sale, from one process at a time; the order writer's batches and its summary."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from flashsale.engine.reporter import SaleReporter
from flashsale.store.writer import OrderWriter
from tests.booking_helpers import at
from tests.conftest import ServiceFactory


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


async def test_openings_sell_outs_and_summaries_are_logged_once(
    make_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flashsale.engine.reporter")
    service = await make_service(run_sweeper=False)  # the reporters below are the only ones
    engine = service.services.engine
    # two processes' sweepers: only the holder of the lease speaks
    reporters = [SaleReporter(engine, summary_interval_s=0.0, tick_s=0.0, lease_ms=400)
                 for _ in range(2)]  # fmt: skip

    async def tick(*which: SaleReporter) -> None:
        for reporter in which or reporters:
            await reporter.tick()

    opens_in = 1.0
    opens_at = time.monotonic() + opens_in
    sale = await service.create_sale(stock=2, fcode_stock=1, starts_at=at(opens_in))
    sale_id = sale["sale_id"]
    await tick()
    assert lines(caplog, "flashsale.engine.reporter") == []  # a scheduled sale says nothing
    await asyncio.sleep(max(0.0, opens_at - time.monotonic()) + 0.05)
    await tick()
    await tick()
    said = lines(caplog, "flashsale.engine.reporter")
    assert [s for s in said if "opened" in s] == [
        f"sale {sale_id} opened: 1 unit(s) on sale (1 more set aside for F-codes)"
    ]
    summaries = [s for s in said if s.startswith(f"sale {sale_id} open:")]
    assert summaries
    assert "available 1 (F-code 1), reserved 0, paid 0" in summaries[-1]

    caplog.clear()
    assert (await service.buy(sale_id, "alice")).status == 201
    await tick()
    said = lines(caplog, "flashsale.engine.reporter")
    assert len([s for s in said if "sold out" in s]) == 1, said
    assert any("sold out" in s and "0 unit(s) paid, 1 reserved and unpaid" in s for s in said)
    # a sale not selling is summed up once, until something moves
    caplog.clear()
    await tick()
    await tick()
    assert lines(caplog, "flashsale.engine.reporter") == []

    # the holder goes away; after its lease the other one speaks, without repeating a thing
    owner = await engine.redis.get(engine.keys.reporter_lease)
    other = next(r for r in reporters if r.owner != owner)
    await asyncio.sleep(0.5)
    await service.call("POST", f"/v1/admin/sales/{sale_id}/close",
                       headers=service.admin_headers)  # fmt: skip
    caplog.clear()
    await tick(other)
    await tick(other)
    said = lines(caplog, "flashsale.engine.reporter")
    assert said == [
        f"sale {sale_id} was closed: 0 unit(s) paid, 1 reserved and unpaid, 0 expired, 0 cancelled"
    ], said


async def test_the_writer_logs_its_batches_and_a_summary(
    make_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="flashsale.store.writer")
    service = await make_service(run_writer=False)
    sale_id = (await service.create_sale(stock=3))["sale_id"]
    for user in ("a", "b"):
        assert (await service.buy(sale_id, user)).status == 201
    writer = OrderWriter(service.services.engine.redis, service.services.pool,
                         service.services.engine.keys, block_ms=50)  # fmt: skip
    writer.summary_interval_s = 0.3
    task = asyncio.create_task(writer.run())
    try:
        await asyncio.sleep(1.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    said = lines(caplog, "flashsale.store.writer")
    assert said[0] == f"order writer {writer.consumer} started"
    assert "order writer: 2 event(s) of 1 stream(s) written, 0 set aside" in said
    info = [r.getMessage() for r in caplog.records
            if r.name == "flashsale.store.writer" and r.levelno == logging.INFO]  # fmt: skip
    summary = [s for s in info if "written to PostgreSQL in the last" in s]
    assert len(summary) == 1, info  # once, for the interval that wrote something
    assert summary[0].startswith("order writer: 2 event(s) written to PostgreSQL in the last")
