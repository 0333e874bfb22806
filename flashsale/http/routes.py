"""The URL map."""

from __future__ import annotations

from aiohttp import web

from flashsale.http import (
    admin,
    admin_events,
    admin_fcodes,
    admin_page,
    admin_sales,
    bookings,
    health,
    openapi,
    opening,
    payments,
    shop,
)


def setup_routes(app: web.Application) -> None:
    # aiohttp tries the routes under one prefix in this order: the launch's hottest come first
    app.router.add_post("/v1/sales/{sale_id}/buy", shop.buy)
    app.router.add_get("/v1/sales/{sale_id}/bookings/me", bookings.my_booking)
    app.router.add_get("/v1/sales/{sale_id}", shop.get_sale)
    app.router.add_get("/v1/sales/{sale_id}/opening", opening.get_opening)
    app.router.add_post("/v1/sales/{sale_id}/bookings", bookings.book)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/openapi.json", openapi.serve_openapi)
    app.router.add_get("/v1/orders/{order_id}", shop.get_order)
    app.router.add_post("/v1/orders/{order_id}/pay", shop.pay)
    app.router.add_post("/v1/orders/{order_id}/cancel", shop.cancel)
    app.router.add_post("/v1/payments/events", payments.payment_event)
    app.router.add_post("/v1/admin/sales", admin.create_sale)
    app.router.add_get("/v1/admin/sales", admin_sales.list_sales)
    app.router.add_get("/v1/admin/sales/{sale_id}", admin_sales.get_sale)
    app.router.add_patch("/v1/admin/sales/{sale_id}", admin_sales.edit_sale)
    app.router.add_delete("/v1/admin/sales/{sale_id}", admin_sales.delete_sale)
    app.router.add_post("/v1/admin/sales/{sale_id}/pause", admin.pause_sale)
    app.router.add_post("/v1/admin/sales/{sale_id}/resume", admin.resume_sale)
    app.router.add_post("/v1/admin/sales/{sale_id}/close", admin.close_sale)
    app.router.add_get("/v1/admin/sales/{sale_id}/stats", admin.sale_stats)
    app.router.add_get("/v1/admin/sales/{sale_id}/opening/tickets", opening.export_tickets)
    app.router.add_post("/v1/admin/sales/{sale_id}/fcodes", admin_fcodes.issue_fcodes)
    app.router.add_get("/v1/admin/events", admin_events.list_events)
    # the live sale page: static files, public (every number it shows needs the admin token)
    app.router.add_get("/admin", admin_page.page)
    app.router.add_get("/admin/", admin_page.to_page)
    app.router.add_get("/admin/{asset}", admin_page.asset)
