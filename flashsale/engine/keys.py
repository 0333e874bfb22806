"""Every Redis key flashsale uses, and how long each lives.

All keys of one sale carry the hash tag ``{<sale_id>}`` so that a Redis Cluster keeps them on
one slot and a script can touch them all. Scripts receive every key through ``KEYS``; none is
built inside Lua.

==========================================  ======  ============================================
key                                          type    contents and lifetime
==========================================  ======  ============================================
``<p>:sales``                                set     ids of armed sales (the writer and sweeper
                                                     walk it); kept
``<p>:{<sale>}:sale``                        hash    definition, state and unit counters; kept
``<p>:{<sale>}:holders``                     hash    user id -> units held (reserved + paid); kept
``<p>:{<sale>}:deadlines``                   zset    reserved order id -> expiry (ms); an entry
                                                     leaves when its order is paid or settled
``<p>:{<sale>}:events``                      stream  order events for the PostgreSQL writer; an
                                                     entry is deleted once committed
``<p>:{<sale>}:order:<order_id>``            hash    one order; kept
``<p>:{<sale>}:idem:<n>:<user>:<key>``       string  first answer to an Idempotency-Key;
                                                     ``idempotency_ttl_s``
``<p>:{<sale>}:fcodes``                      hash    F-code digest -> "state|campaign|order|user"
                                                     (state a = usable, u = used, r = revoked)
``<p>:{<sale>}:fcfail:u:<n>:<user>``         string  failed F-codes of a user in the window;
                                                     ``fcode_failure_window_s``
``<p>:{<sale>}:fcfail:a:<address>``          string  the same per client address
==========================================  ======  ============================================
"""

from __future__ import annotations

from dataclasses import dataclass

WRITER_GROUP = "writers"


@dataclass(frozen=True, slots=True)
class SaleKeys:
    """The keys of one sale."""

    sale_id: str
    sale: str
    holders: str
    deadlines: str
    events: str
    fcodes: str
    _base: str

    def order(self, order_id: str) -> str:
        return f"{self._base}:order:{order_id}"

    def idempotency(self, user_id: str, key: str) -> str:
        # the length makes "<user>:<key>" unambiguous whatever characters a user id holds
        return f"{self._base}:idem:{len(user_id)}:{user_id}:{key}"

    def fcode_failures_of_user(self, user_id: str) -> str:
        return f"{self._base}:fcfail:u:{len(user_id)}:{user_id}"

    def fcode_failures_of_address(self, address: str) -> str:
        return f"{self._base}:fcfail:a:{address}"


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Key names for one deployment, all under ``prefix``."""

    prefix: str

    @property
    def sales_index(self) -> str:
        return f"{self.prefix}:sales"

    def sale(self, sale_id: str) -> SaleKeys:
        base = f"{self.prefix}:{{{sale_id}}}"
        return SaleKeys(
            sale_id=sale_id,
            sale=f"{base}:sale",
            holders=f"{base}:holders",
            deadlines=f"{base}:deadlines",
            events=f"{base}:events",
            fcodes=f"{base}:fcodes",
            _base=base,
        )
