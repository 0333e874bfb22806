"""Operator endpoint: issue a small campaign of F-codes and get the codes back.

Large campaigns go through ``flashsale fcodes issue``, which writes a CSV file. The answer is
the only copy of the codes: each comes with its ``code_ref``, which ``flashsale fcodes export``
lists, and ``warnings`` says what may keep codes from buying (more codes than F-code units left,
a paused sale, users holding a code already); codes that could never buy are refused."""

from __future__ import annotations

import logging

from aiohttp import web

from flashsale import errors
from flashsale.fcodes.issue import check_campaign, issue_campaign
from flashsale.http.admin import admin_services
from flashsale.http.responses import json_response
from flashsale.http.validation import (
    integer,
    path_sale_id,
    read_json_object,
    reject_unknown,
    text,
)

log = logging.getLogger(__name__)

MAX_CODES = 10_000
_FIELDS = frozenset({"count", "campaign", "bind_users"})


async def issue_fcodes(request: web.Request) -> web.Response:
    services = admin_services(request)
    sale_id = path_sale_id(request)
    body = await read_json_object(
        request, services.settings.admin_max_body_bytes, services.settings.body_timeout_s
    )
    reject_unknown(body, _FIELDS)
    campaign = text(body, "campaign", max_len=64)
    check_campaign(campaign)
    users = _users(body.get("bind_users"))
    count = None
    if users is None or body.get("count") is not None:
        count = integer(body, "count", minimum=1, maximum=MAX_CODES)
    issued = await issue_campaign(
        services.pool, services.engine, services.fcode_key, sale_id, campaign,
        count=count, bind_users=users,
    )  # fmt: skip
    log.info("sale %s: campaign %s issued, %d F-codes", sale_id, campaign, len(issued.codes))
    return json_response(
        {
            "campaign": campaign,
            "sale_id": sale_id,
            "codes": [
                {"code": c.code, "code_ref": c.code_ref, "user": c.user} for c in issued.codes
            ],
            "warnings": issued.warnings,
        },
        status=201,
    )


def _users(value: object) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_CODES:
        raise errors.InvalidRequest(f"'bind_users' must be a list of 1 to {MAX_CODES} user ids")
    if not all(isinstance(u, str) for u in value):
        raise errors.InvalidRequest("'bind_users' must hold strings (user ids)")
    return value
