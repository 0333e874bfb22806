"""Confirm mode "postgres": 201 only after the order row is committed."""

from __future__ import annotations

from flashsale.settings import ConfirmMode
from tests.conftest import ServiceFactory
from tests.helpers import gather_limited


async def test_row_is_committed_before_the_answer(make_service: ServiceFactory) -> None:
    service = await make_service(confirm_mode=ConfirmMode.POSTGRES, run_writer=False)
    sale = await service.create_sale(stock=50)
    replies = await gather_limited(50, *(service.buy(sale["sale_id"], f"u{i}") for i in range(60)))
    confirmed = {r.body["order"]["order_id"] for r in replies if r.status == 201}
    assert len(confirmed) == 50
    assert {r.body["error"] for r in replies if r.status != 201} == {"sold_out"}
    # no writer runs in this service: every row got there before its 201
    rows = await service.services.pool.fetch(
        "SELECT order_id, status FROM orders WHERE sale_id = $1", sale["sale_id"]
    )
    assert {r["order_id"] for r in rows} == confirmed
    assert {r["status"] for r in rows} == {"reserved"}


async def test_writer_events_after_a_confirmed_row_still_apply(
    make_service: ServiceFactory,
) -> None:
    service = await make_service(confirm_mode=ConfirmMode.POSTGRES)
    sale = await service.create_sale(stock=2)
    reply = await service.buy(sale["sale_id"], "u1")
    order_id = reply.body["order"]["order_id"]
    assert (await service.pay(order_id)).body["payment"]["outcome"] == "paid"
    await service.wait_for_postgres(sale["sale_id"])
    status = await service.services.pool.fetchval(
        "SELECT status FROM orders WHERE order_id = $1", order_id
    )
    assert status == "paid"
