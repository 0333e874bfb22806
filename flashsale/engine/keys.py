"""Every Redis key flashsale uses, and how long each lives.

All keys of one sale carry the hash tag ``{<sale_id>}`` so that a Redis Cluster keeps them on
one slot and a script can touch them all. Scripts receive every key through ``KEYS``; none is
built inside Lua.

==========================================  ======  ============================================
key                                          type    contents and lifetime
==========================================  ======  ============================================
``<p>:sales``                                set     ids of armed sales (the writer and sweeper
                                                     walk it); kept
``<p>:reporter``                             string  which process logs the sales' openings,
                                                     sell-outs and summaries (engine/reporter.py);
                                                     a lease of a few seconds, renewed
``<p>:{<sale>}:sale``                        hash    definition, state and unit counters; kept
``<p>:{<sale>}:reported``                    string  the sale's status the log last told
                                                     (engine/reporter.py); kept
``<p>:{<sale>}:holders``                     hash    user id -> units held (reserved + paid); kept
``<p>:{<sale>}:deadlines``                   zset    reserved order id -> expiry (ms); an entry
                                                     leaves when its order is paid or settled
``<p>:{<sale>}:events``                      stream  order events for the PostgreSQL writer; an
                                                     entry is deleted once committed
``<p>:{<sale>}:deadletters``                 stream  events PostgreSQL refused for good (see
                                                     store/dead_letters.py), with the reason;
                                                     kept until retried
``<p>:{<sale>}:order:<order_id>``            hash    one order; kept
``<p>:{<sale>}:idem:<n>:<user>:<key>``       string  first answer to an Idempotency-Key;
                                                     ``idempotency_ttl_s``
``<p>:{<sale>}:fcodes``                      hash    F-code digest -> "state|campaign|order|user"
                                                     (state a = usable, u = used, r = revoked)
``<p>:{<sale>}:fcfail:u:<n>:<user>``         string  F-code guesses of a user in the window;
                                                     ``fcode_failure_window_s``
``<p>:{<sale>}:fcfail:a:<address>``          string  the same per client address
``<p>:{<sale>}:rl:u:<n>:<user>``             string  rate limit (GCRA) of a shopper's buy and
                                                     book requests: the theoretical arrival time
                                                     (µs); expires once it is in the past
``<p>:{<sale>}:rl:a:<address>``              string  the same per client address
``<p>:{<sale>}:bk:<bucket>``                 hash    bookings: user digest (10 bytes) -> booking
                                                     number; 2**17 buckets so each stays a small
                                                     listpack (about 20 bytes a booking); kept
``<p>:{<sale>}:tk:<bucket>``                 hash    opening window tickets: user digest (as
                                                     for bookings) -> ticket number; kept (see
                                                     flashsale/opening/fields.py)
``<p>:{<sale>}:tkroll``                      string  the same by ticket number: the 10-byte user
                                                     digest of ticket t at offset 10 (t - 1);
                                                     kept
``<p>:{<sale>}:waves``                       zset    admission waves: first queue rank -> member
                                                     "<first rank>:<admitted at ms>"; kept
``<p>:{<sale>}:qheld``                       hash    user id -> units held that were bought
                                                     through the booking queue; kept
``<p>:{<sale>}:qbits``                       string  bitmap by queue rank: 1 while that shopper
                                                     holds units bought through the queue; kept
``<p>:{<sale>}:pay:<payment_id>``            string  a payment notified for an order of the
                                                     sale and its outcome (JSON), so a payment is
                                                     decided once however often it is sent; kept
``<p>:{<sale>}:whk:<webhook_id>``            string  the same record under the notification's
                                                     webhook-id (a redelivery is answered as the
                                                     first time); ``idempotency_ttl_s``
==========================================  ======  ============================================
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

WRITER_GROUP = "writers"

# Bookings are spread over this many small hashes. Redis keeps a hash of short fields as a
# compact listpack while it holds at most hash-max-listpack-entries of them (512 by default in
# Redis 7, 128 in its sample redis.conf). At 7.5 million bookings a bucket holds about 57
# (at most about 95), so buckets stay compact up to about 12 million bookings even at 128.
BOOKING_BUCKETS = 1 << 17


def booking_slot(user_id: str) -> tuple[int, bytes]:
    """Where a user's booking lives: (bucket, field). The field is 80 bits of a hash of the
    user id, and the bucket 17 other bits: two users collide only with odds near 2**-97."""
    digest = hashlib.blake2b(user_id.encode(), digest_size=14, person=b"flashsale-bk").digest()
    return int.from_bytes(digest[10:], "big") % BOOKING_BUCKETS, digest[:10]


@dataclass(frozen=True, slots=True)
class SaleKeys:
    """The keys of one sale."""

    sale_id: str
    sale: str
    holders: str
    deadlines: str
    events: str
    dead_letters: str
    fcodes: str
    waves: str
    queue_holders: str
    queue_bits: str
    ticket_roll: str
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

    def requests_of_user(self, user_id: str) -> str:
        return f"{self._base}:rl:u:{len(user_id)}:{user_id}"

    def requests_of_address(self, address: str) -> str:
        return f"{self._base}:rl:a:{address}"

    def booking_bucket(self, bucket: int) -> str:
        return f"{self._base}:bk:{bucket}"

    def ticket_bucket(self, bucket: int) -> str:
        """Opening window tickets, bucketed as bookings are (the same user digest)."""
        return f"{self._base}:tk:{bucket}"

    @property
    def reported(self) -> str:
        return f"{self._base}:reported"

    def payment(self, payment_id: str) -> str:
        return f"{self._base}:pay:{payment_id}"

    def webhook(self, webhook_id: str) -> str:
        return f"{self._base}:whk:{webhook_id}"


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Key names for one deployment, all under ``prefix``."""

    prefix: str

    @property
    def sales_index(self) -> str:
        return f"{self.prefix}:sales"

    @property
    def reporter_lease(self) -> str:
        return f"{self.prefix}:reporter"

    def sale(self, sale_id: str) -> SaleKeys:
        return _sale_keys(self.prefix, sale_id)


@functools.lru_cache(maxsize=1024)  # every request names its sale: build its keys once
def _sale_keys(prefix: str, sale_id: str) -> SaleKeys:
    base = f"{prefix}:{{{sale_id}}}"
    return SaleKeys(
        sale_id=sale_id,
        sale=f"{base}:sale",
        holders=f"{base}:holders",
        deadlines=f"{base}:deadlines",
        events=f"{base}:events",
        dead_letters=f"{base}:deadletters",
        fcodes=f"{base}:fcodes",
        waves=f"{base}:waves",
        queue_holders=f"{base}:qheld",
        queue_bits=f"{base}:qbits",
        ticket_roll=f"{base}:tkroll",
        _base=base,
    )
