"""After the last unit, the crowd is answered from memory; returned units sell again promptly."""

from __future__ import annotations

import asyncio

from tests.conftest import ServiceFactory
from tests.helpers import CountingScript


async def test_sold_out_answers_without_redis(make_service: ServiceFactory) -> None:
    service = await make_service(sold_out_recheck_s=30.0)
    engine = service.services.engine
    counter = CountingScript(engine.scripts.buy)
    engine.scripts.buy = counter  # type: ignore[assignment]
    sale = await service.create_sale(stock=1)
    assert (await service.buy(sale["sale_id"], "first")).status == 201
    replies = [await service.buy(sale["sale_id"], f"late-{i}") for i in range(50)]
    assert {r.body["error"] for r in replies} == {"sold_out"}
    assert counter.calls == 2, "only the first sold-out answer may ask Redis"


async def test_units_returned_elsewhere_sell_again_promptly(make_service: ServiceFactory) -> None:
    front = await make_service(sold_out_recheck_s=0.1)
    other_process = await make_service()
    sale = await front.create_sale(stock=1)
    sale_id = sale["sale_id"]
    order_id = (await front.buy(sale_id, "winner")).body["order"]["order_id"]
    assert (await front.buy(sale_id, "waiting")).body["error"] == "sold_out"
    # the unit comes back through another service process: this one learns it by re-checking
    assert (await other_process.order_action(order_id, "winner", "cancel")).status == 200
    loop = asyncio.get_running_loop()
    started = loop.time()
    while (reply := await front.buy(sale_id, "waiting")).status != 201:
        assert reply.body["error"] == "sold_out"
        assert loop.time() - started < 1.0, "returned unit not on sale again within 1 s"
        await asyncio.sleep(0.01)
    assert loop.time() - started < 0.5


async def test_a_partial_refusal_does_not_close_the_sale(make_service: ServiceFactory) -> None:
    """Asking for 2 when 1 is left is refused, but the last unit stays on sale."""
    service = await make_service(sold_out_recheck_s=30.0)
    sale = await service.create_sale(stock=3, per_user_limit=2)
    assert (await service.buy(sale["sale_id"], "a", {"quantity": 2})).status == 201
    too_many = await service.buy(sale["sale_id"], "b", {"quantity": 2})
    assert too_many.body["error"] == "sold_out"
    assert "1 unit" in too_many.body["message"]
    assert (await service.buy(sale["sale_id"], "b", {"quantity": 1})).status == 201
