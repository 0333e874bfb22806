"""Operator endpoints over the sales themselves: list them, read one, correct one before it
opens (PATCH), delete one that never opened; and the warnings a new or corrected definition
gets.

An edit or a delete is decided twice, in the order that keeps the two stores together:
PostgreSQL's row is locked first (``SELECT ... FOR UPDATE``, which also holds off every order,
booking or F-code campaign that would reference the sale), what PostgreSQL holds is checked and
the row changed, then one Redis script checks the clock and the counters and changes the sale
hash at once, and only then does PostgreSQL commit. A buy or a booking racing the edit sees the
old sale or the new one, never a mix: before the sale opens it is refused either way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from flashsale import errors
from flashsale.engine.engine import Engine, now_ms
from flashsale.http import sale_options
from flashsale.http.admin import _SALE_FIELDS, admin_services, parse_sale, with_lottery_seed
from flashsale.http.responses import json_response
from flashsale.http.sale_warnings import sale_warnings
from flashsale.http.validation import path_sale_id, read_json_object, reject_unknown
from flashsale.models import SaleDefinition, SaleStatus, SaleView, iso
from flashsale.store import sales as sale_store

log = logging.getLogger(__name__)

DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
_LIST_PARAMETERS = frozenset({"status", "limit"})
_EDIT_FIELDS = _SALE_FIELDS - {"sale_id"}


def sale_body(sale: SaleDefinition) -> dict[str, Any]:
    """The create body that makes ``sale``: ``parse_sale(sale_body(sale)) == sale``."""
    body: dict[str, Any] = {
        "sale_id": sale.sale_id,
        "sku": sale.sku,
        "name": sale.name,
        "price_cents": sale.price_cents,
        "currency": sale.currency,
        "stock": sale.stock,
        "per_user_limit": sale.per_user_limit,
        "starts_at": iso(sale.starts_ms),
        "ends_at": iso(sale.ends_ms),
        "reservation_ttl_s": sale.reservation_ttl_s,
        "fcode_stock": sale.fcode_stock,
        "rate_per_user": sale.rate_per_user.rate,
        "burst_per_user": sale.rate_per_user.burst,
        "rate_per_address": sale.rate_per_address.rate,
        "burst_per_address": sale.rate_per_address.burst,
    }
    if sale.fcode_opens_ms is not None:
        body["fcode_opens_at"] = iso(sale.fcode_opens_ms)
    policy = sale.booking
    if policy is not None:
        body |= {
            "booking_opens_at": iso(policy.opens_ms),
            "booking_closes_at": iso(policy.closes_ms),
            "booking_required": policy.required,
            "admission": policy.admission.value,
        }
        if policy.capacity is not None:
            body["booking_capacity"] = policy.capacity
        if policy.admission.queued:
            body["admission_ratio"] = policy.admission_ratio
            body["admission_window_s"] = policy.admission_window_s
        if policy.lottery_seed is not None:
            body["lottery_seed"] = policy.lottery_seed
    opening = sale.opening
    if opening is not None:  # its queue takes the admission ratio and window
        body["opening_window_ms"] = opening.window_ms
        body["admission_ratio"] = opening.admission_ratio
        body["admission_window_s"] = opening.admission_window_s
        if opening.seed is not None:
            body["opening_seed"] = opening.seed
    if sale.fcode_release_ms is not None:
        body["fcode_release_at"] = iso(sale.fcode_release_ms)
    return body


def merge_edit(current: SaleDefinition, patch: dict[str, Any]) -> dict[str, Any]:
    """The create body of ``current`` with ``patch`` laid over it. ``null`` puts a field back
    to its default; ``booking_opens_at`` and ``booking_closes_at`` both null drop booking. A
    field that only made sense with the value the patch changes goes with it (a burst with a
    rate set to 0, the queue settings and seed of an admission changed)."""
    if "sale_id" in patch:
        raise errors.InvalidRequest(
            "'sale_id' cannot change: a sale under another id is another sale (create it, "
            "and delete this one if it never opened)"
        )
    reject_unknown(patch, _EDIT_FIELDS)
    body = sale_body(current)
    if patch.get("booking_opens_at", ...) is None and patch.get("booking_closes_at", ...) is None:
        for name in ("booking_opens_at", "booking_closes_at", "booking_required",
                     "booking_capacity", "admission"):  # fmt: skip
            body.pop(name, None)
    for who in ("user", "address"):
        if patch.get(f"rate_per_{who}") == 0 and f"burst_per_{who}" not in patch:
            body.pop(f"burst_per_{who}", None)
    for name, value in patch.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    # what the sale no longer has a use for, unless the patch gives it (then it is refused)
    kept = set(patch)
    queued = body.get("admission") in ("booking_order", "lottery")
    window = sale_options.opening_requested(body)
    unused = {
        "admission_ratio": not queued and not window,
        "admission_window_s": not queued and not window,
        "lottery_seed": body.get("admission") != "lottery",
        "opening_seed": not window,
    }
    for name, gone in unused.items():
        if gone and name not in kept:
            body.pop(name, None)
    return body


def _needs_no_bookings(old: SaleDefinition, new: SaleDefinition) -> bool:
    """Would bookings taken under ``old`` be stranded, or their order be another, under
    ``new``? (A lottery's seed, once bookings exist, may not be chosen again.)"""
    if old.booking is None:
        return False
    return new.booking is None or (
        (new.booking.admission, new.booking.lottery_seed)
        != (old.booking.admission, old.booking.lottery_seed)
    )


def _check_fcodes(old: SaleDefinition, new: SaleDefinition, usable: int, campaigns: int) -> None:
    """Codes issued for the sale keep the units they were issued against."""
    if not campaigns:
        return
    floor = min(old.fcode_stock, usable)
    if new.fcode_stock < max(floor, 1):
        raise errors.SaleNotEditable(
            f"sale {old.sale_id!r} cannot be edited: F-codes were issued for it ({usable} "
            f"usable): fcode_stock may not go below {max(floor, 1)}"
        )


async def edit_sale(request: web.Request) -> web.Response:
    """``PATCH /v1/admin/sales/{id}``: correct a sale before it opens."""
    services = admin_services(request)
    sale_id = path_sale_id(request)
    patch = await read_json_object(
        request, services.settings.admin_max_body_bytes, services.settings.body_timeout_s
    )
    in_redis: SaleDefinition | None = None  # the old definition, once Redis has the new one
    async with services.pool.acquire() as conn:
        try:
            async with conn.transaction():
                stored = await sale_store.lock_sale(conn, sale_id)
                if stored is None:
                    raise errors.SaleNotFound()
                old = stored[0]
                new = with_lottery_seed(
                    parse_sale(
                        merge_edit(old, patch),
                        default_currency=services.settings.default_currency,
                    ),
                    None,
                )
                now = now_ms()
                if new.ends_ms <= now:
                    raise errors.InvalidRequest(f"'ends_at' {iso(new.ends_ms)} is in the past")
                held = await sale_store.dependents(conn, sale_id)
                _check_fcodes(old, new, held["usable_fcodes"], held["campaigns"])
                if new != old:
                    await sale_store.update_sale(conn, new)
                    await services.engine.edit_sale(
                        new, needs_no_bookings=_needs_no_bookings(old, new)
                    )
                    in_redis = old
        except BaseException:
            if in_redis is not None:  # PostgreSQL did not commit what Redis took: undo it
                await _restore(services.engine, in_redis)
            raise
    view = await services.engine.get_sale(sale_id)
    if new != old:
        changed = sorted(k for k, v in sale_body(new).items() if sale_body(old).get(k) != v)
        log.info("sale %s edited: %s", sale_id, ", ".join(changed) or "booking policy")
    return json_response({"sale": view.admin_json(now_ms()), "warnings": sale_warnings(new, now)})


async def _restore(engine: Engine, old: SaleDefinition) -> None:
    """Put the old definition back into Redis when PostgreSQL did not take the new one."""
    try:
        await engine.edit_sale(old, needs_no_bookings=False)
    except (errors.FlashsaleError, OSError) as exc:  # the sale opened meanwhile: say so
        log.error("sale %s: edited in Redis, not in PostgreSQL, and not undone (%s): "
                  "repeat the edit", old.sale_id, exc)  # fmt: skip


async def delete_sale(request: web.Request) -> web.Response:
    """``DELETE /v1/admin/sales/{id}``: remove a sale that never opened and holds nothing."""
    services = admin_services(request)
    sale_id = path_sale_id(request)
    async with services.pool.acquire() as conn, conn.transaction():
        stored = await sale_store.lock_sale(conn, sale_id)
        held = await sale_store.dependents(conn, sale_id)
        in_postgres = {
            "order(s)": held["orders"],
            "booking(s)": held["bookings"],
            "F-code campaign(s)": held["campaigns"],
            "payment(s)": held["payments"],
        }
        holds = ", ".join(f"{n} {what}" for what, n in in_postgres.items() if n)
        if holds:
            raise errors.SaleNotEditable(f"sale {sale_id!r} cannot be deleted: it has {holds}")
        try:
            await services.engine.delete_sale(sale_id)
        except errors.SaleNotFound:
            # only in PostgreSQL: a create that never reached Redis, or a delete half done
            if stored is None:
                raise
            if now_ms() >= min(stored[0].starts_ms, stored[0].fcode_opens_at_ms):
                raise errors.SaleNotEditable(
                    f"sale {sale_id!r} cannot be deleted: it opened at {iso(stored[0].starts_ms)}"
                ) from None
        if stored is not None:
            await sale_store.delete_sale(conn, sale_id)
    log.info("sale %s deleted", sale_id)
    return json_response({"deleted": sale_id})


async def get_sale(request: web.Request) -> web.Response:
    """``GET /v1/admin/sales/{id}``: the sale as its operator sees it."""
    services = admin_services(request)
    view = await services.engine.get_sale(path_sale_id(request))
    return json_response({"sale": view.admin_json(now_ms())})


def _list_query(request: web.Request) -> tuple[frozenset[SaleStatus] | None, int]:
    unknown = sorted(set(request.query) - _LIST_PARAMETERS)
    if unknown:
        raise errors.InvalidRequest(f"unknown query parameter: {unknown[0]!r}")
    for name in _LIST_PARAMETERS:
        if len(request.query.getall(name, [])) > 1:
            raise errors.InvalidRequest(f"'{name}' given more than once")
    statuses = None
    if "status" in request.query:
        words = request.query["status"].split(",")
        try:
            statuses = frozenset(SaleStatus(word) for word in words)
        except ValueError:
            choices = ", ".join(s.value for s in SaleStatus)
            raise errors.InvalidRequest(
                f"'status' must be one or more of {choices}, separated by commas"
            ) from None
    limit = DEFAULT_LIMIT
    if "limit" in request.query:
        text = request.query["limit"]
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_LIMIT):
            raise errors.InvalidRequest(f"'limit' must be an integer from 1 to {MAX_LIMIT}")
        limit = int(text)
    return statuses, limit


async def list_sales(request: web.Request) -> web.Response:
    """``GET /v1/admin/sales?status=open,paused&limit=100``: the latest start first.

    PostgreSQL knows every sale; Redis holds its live status and numbers. A sale PostgreSQL
    has and Redis not (a create that did not finish: repeat it) is named in ``not_armed``."""
    services = admin_services(request)
    statuses, limit = _list_query(request)
    sale_ids = await sale_store.list_sales(services.pool)
    now = now_ms()
    found: list[dict[str, Any]] = []
    not_armed: list[str] = []
    for start in range(0, len(sale_ids), 100):
        chunk = sale_ids[start : start + 100]
        views = await asyncio.gather(
            *(services.engine.get_sale(s) for s in chunk), return_exceptions=True
        )
        for sale_id, view in zip(chunk, views, strict=True):
            if isinstance(view, errors.SaleNotFound):
                not_armed.append(sale_id)
            elif isinstance(view, BaseException):
                raise view
            elif statuses is None or view.status(now) in statuses:
                found.append(_listed(view, now))
        if len(found) >= limit:
            break
    return json_response({"sales": found[:limit], "not_armed": not_armed})


def _listed(view: SaleView, now: int) -> dict[str, Any]:
    c = view.counters
    return {**view.admin_json(now), "reserved": c.reserved, "paid": c.paid}
