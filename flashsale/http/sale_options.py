"""Sale options read by parse_sale beside the core ones: the opening window
(``opening_window_ms``, ``opening_seed``) and the F-code lane's release
(``fcode_release_at``)."""

from __future__ import annotations

from dataclasses import replace

from flashsale import errors
from flashsale.http.validation import integer, number, text, timestamp_ms
from flashsale.models import BookingPolicy, OpeningPolicy, SaleDefinition
from flashsale.opening import shuffle

OPTION_FIELDS = frozenset({"opening_window_ms", "opening_seed", "fcode_release_at"})
# An hour before the start and an hour after: a pre-queue of two hours, at most
OPENING_WINDOW_MAX_MS = 3_600_000


def opening_requested(body: dict[str, object]) -> bool:
    """Whether the body asks for an opening window (whose queue then takes the admission
    ratio and window, which otherwise belong to a booking queue)."""
    return body.get("opening_window_ms", 0) not in (0, None)


def parse_opening(
    body: dict[str, object], starts_ms: int, ends_ms: int, booking: BookingPolicy | None
) -> OpeningPolicy | None:
    """The opening window of the body; None without one (``opening_window_ms`` 0 or left
    out)."""
    window_ms = integer(
        body, "opening_window_ms", default=0, minimum=0, maximum=OPENING_WINDOW_MAX_MS
    )
    if window_ms == 0:
        if body.get("opening_seed") is not None:
            raise errors.InvalidRequest("'opening_seed' applies only with an 'opening_window_ms'")
        return None
    if booking is not None and booking.admission.queued:
        raise errors.InvalidRequest(
            f"'opening_window_ms' applies only to admission 'arrival': with admission "
            f"'{booking.admission.value}' the queue is already in an order (booking numbers or "
            "the lottery's draw), which nobody wins by arriving first"
        )
    if starts_ms + window_ms >= ends_ms:
        raise errors.InvalidRequest(
            "the opening window must close before 'ends_at': 'starts_at' + 'opening_window_ms' "
            "is after it"
        )
    seed = None
    if body.get("opening_seed") is not None:
        seed = text(body, "opening_seed", max_len=128)
    return OpeningPolicy(
        window_ms=window_ms,
        seed=seed,
        admission_ratio=number(body, "admission_ratio", default=1.0, minimum=0.01, maximum=1000.0),
        admission_window_s=integer(
            body, "admission_window_s", default=120, minimum=1, maximum=86_400
        ),
    )


def parse_fcode_release(
    body: dict[str, object], fcode_stock: int, fcode_opens_ms: int, ends_ms: int
) -> int | None:
    """When the F-code units nobody redeemed pass to the public lane; None: never."""
    if body.get("fcode_release_at") is None:
        return None
    release_ms = timestamp_ms(body, "fcode_release_at")
    if fcode_stock == 0:
        raise errors.InvalidRequest("'fcode_release_at' needs units set aside ('fcode_stock')")
    if release_ms <= fcode_opens_ms:
        raise errors.InvalidRequest(
            "'fcode_release_at' must be after the F-code lane opens ('fcode_opens_at', or "
            "'starts_at'): the code holders get their chance first"
        )
    if release_ms >= ends_ms:
        raise errors.InvalidRequest("'fcode_release_at' must be before 'ends_at'")
    return release_ms


def with_opening_seed(sale: SaleDefinition, stored: SaleDefinition | None) -> SaleDefinition:
    """A sale with an opening window created without a seed gets a fresh random one, or, when
    the create is being repeated, the one it got the first time (as a lottery's seed)."""
    opening = sale.opening
    if opening is None or opening.seed:
        return sale
    stored_seed = stored.opening.seed if stored is not None and stored.opening else None
    return replace(sale, opening=replace(opening, seed=stored_seed or shuffle.new_seed()))
