"""The Lua scripts shipped in ``lua/``, called by SHA with a reload when Redis forgot them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from flashsale.engine.coalescer import Coalescer


@dataclass(frozen=True, slots=True)
class LuaScript:
    """One atomic operation. Called with EVALSHA; on NOSCRIPT (a restarted or failed-over
    Redis) the body is sent once with SCRIPT LOAD and the call repeated."""

    name: str
    body: str
    sha: str

    @classmethod
    def load(cls, name: str) -> LuaScript:
        body = resources.files("flashsale.engine").joinpath(f"lua/{name}.lua").read_text("utf-8")
        return cls(name=name, body=body, sha=hashlib.sha1(body.encode()).hexdigest())

    async def __call__(
        self,
        redis: Redis | Coalescer,
        keys: Sequence[str],
        args: Sequence[str | bytes | int | float],
    ) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.body)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


class Scripts:
    """All of flashsale's scripts, loaded once per process."""

    def __init__(self) -> None:
        self.arm_sale = LuaScript.load("arm_sale")
        self.edit_sale = LuaScript.load("edit_sale")
        self.delete_sale = LuaScript.load("delete_sale")
        self.set_state = LuaScript.load("set_state")
        self.buy = LuaScript.load("buy")
        self.cancel = LuaScript.load("cancel")
        self.expire = LuaScript.load("expire")
        self.load_fcodes = LuaScript.load("load_fcodes")
        self.revoke_fcodes = LuaScript.load("revoke_fcodes")
        self.book = LuaScript.load("book")
        self.book_many = LuaScript.load("book_many")
        self.admit = LuaScript.load("admit")
        self.pay = LuaScript.load("pay")
        # reconcile's compare-and-set repairs
        self.repair_counters = LuaScript.load("repair_counters")
        self.repair_holders = LuaScript.load("repair_holders")
        self.repair_deadlines = LuaScript.load("repair_deadlines")
