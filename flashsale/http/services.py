"""What handlers need, gathered in one object under one typed app key."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from aiohttp import web

from flashsale.auth import AdminAuth, ShopperAuth
from flashsale.engine.bookings import Bookings
from flashsale.engine.engine import Engine
from flashsale.settings import Settings
from flashsale.store.confirm import GroupCommitter


@dataclass(slots=True)
class Services:
    settings: Settings
    engine: Engine
    bookings: Bookings
    pool: asyncpg.Pool
    shoppers: ShopperAuth
    admin: AdminAuth
    committer: GroupCommitter | None  # set in confirm mode "postgres"
    fcode_key: bytes  # HMAC key of F-code digests


SERVICES = web.AppKey("services", Services)
