"""The plan of one rehearsal: what the driver set up and how the crowd behaves.

The driver writes it as JSON; every Locust process (local, master or worker) reads it from the
path given with ``--plan``. One file instead of a dozen Locust options keeps the master and its
workers in agreement: they all read the same file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from flashsale.payments.simulator import PaymentMix, Shares


@dataclass(frozen=True)
class Plan:
    base_url: str
    sale_id: str
    stock: int
    per_user_limit: int
    admission: str  # arrival, booking_order or lottery
    opens_at: float  # epoch seconds of the sale's start: the opening second
    campaign: str  # the F-code campaign
    pool_dir: str  # identity files written by the driver (pools.py reads them)
    record_dir: str  # where each Locust process writes what it saw (records.py)
    locust_processes: int  # processes that take identities (1 locally, N workers)
    users: int  # the whole crowd, at full strength
    fcode_users: int  # of which hold F-codes (fixed count)
    bot_users: int  # of which are scalpers' scripts (fixed count)
    ramp_s: float  # from none to the whole crowd
    drain_s: float  # the crowd stays this long after the sell-out (payments, late arrivals)
    max_s: float  # stop here even if the sale has not sold out
    pay_share: float  # share of winners who pay; the others never do
    checkout_s: float  # a paying winner pays within this long of the 201
    double_click_share: float  # share of winners who press buy again (limit_reached expected)
    walk_in_share: float  # share of attempts by unbooked shoppers (booking_required expected)
    sold_out_retries: int  # a shopper told sold_out tries this many more times
    poll_interval_s: float  # how often late arrivals and queued shoppers look again
    # the payment service (flashsale/payments/simulator.py): its seed and, of the payments,
    # the shares sent late, delivered twice, sent again under a new webhook-id, wrong first
    payment_seed: int = 7
    late_share: float = 0.0
    repeat_share: float = 0.0
    paid_again_share: float = 0.0
    wrong_amount_share: float = 0.0
    # the sale opens when the crowd starts (Locust's Start button): the driver then sets the
    # opening, and each Locust process takes it from start_gate.py's file (opens_at is a
    # placeholder until then)
    opens_on_start: bool = False
    # the sale's opening window (0: none): buys from this long before the opening to this long
    # after get a ticket, put in a random order when it closes
    opening_window_ms: int = 0
    bot_accounts: int = 1  # booked accounts each bot owns for the whole sale
    # with a window: the booked shoppers each user brings while it is open (the crowd of the
    # opening), each keeping their ticket
    opening_shoppers_per_user: int = 0

    @property
    def queued(self) -> bool:
        """A buy may be answered 202 queued: a booking queue, or the opening window's."""
        return self.admission != "arrival" or self.opening_window_ms > 0

    @property
    def opening_draw_at(self) -> float:
        """When the opening window closes and its tickets are put in order (epoch s)."""
        return self.opens_at + self.opening_window_ms / 1000

    @property
    def payment_mix(self) -> PaymentMix:
        shares = Shares(
            late=self.late_share,
            repeated=self.repeat_share,
            paid_again=self.paid_again_share,
            wrong_amount=self.wrong_amount_share,
        )
        return PaymentMix(seed=self.payment_seed, shares=shares)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls(**json.loads(Path(path).read_text()))
