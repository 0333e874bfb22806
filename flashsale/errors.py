"""The exception tree. Handlers raise these; one middleware turns them into HTTP answers.

::

    FlashsaleError                       500 internal_error
    ├── InvalidRequest                   400 invalid_request
    │   ├── UnreadableBody               400 invalid_request (and the connection is closed)
    │   └── FcodeMalformed               400 fcode_malformed
    ├── Unauthorized                     401 unauthorized
    │   └── SignatureInvalid             401 invalid_signature (a payment notification not
    │                                        signed by the payment service, or out of time)
    ├── Forbidden                        403 forbidden
    │   └── BookingRequired              403 booking_required
    ├── NotFound                         404 not_found
    │   ├── SaleNotFound                 404 sale_not_found
    │   ├── OrderNotFound                404 order_not_found
    │   ├── BookingNotFound              404 booking_not_found
    │   └── OpeningNotOffered            404 opening_not_offered (a sale without an opening
    │                                        window)
    ├── Conflict                         409 conflict
    │   ├── SaleExists                   409 sale_exists
    │   ├── SaleNotEditable              409 sale_not_editable (opened, or holds what an edit
    │   │                                    or a delete would strand)
    │   ├── CampaignExists               409 campaign_exists
    │   ├── SoldOut                      409 sold_out
    │   ├── LimitReached                 409 limit_reached
    │   ├── SaleNotOpen                  409 sale_not_open (not started yet)
    │   │   └── SalePaused               409 sale_paused (paused by the operator; with
    │   │                                    Retry-After)
    │   ├── OrderExpired                 409 order_expired
    │   ├── OrderCancelled               409 order_cancelled
    │   ├── OrderPaid                    409 order_paid
    │   ├── FcodeInvalid                 409 fcode_invalid
    │   ├── FcodeUsed                    409 fcode_used
    │   ├── FcodeRevoked                 409 fcode_revoked
    │   ├── FcodeLaneClosed              409 fcode_lane_closed (the F-code units passed to
    │   │                                    the public; the code stays unused)
    │   ├── OpeningNotDrawn              409 opening_not_drawn (the opening window is still
    │   │                                    open; with Retry-After)
    │   ├── BookingNotOffered            409 booking_not_offered
    │   ├── BookingNotOpen               409 booking_not_open
    │   ├── BookingClosed                409 booking_closed
    │   ├── BookingFull                  409 booking_full
    │   └── AdmissionPassed              409 admission_passed
    ├── RequestTimeout                   408 request_timeout (and the connection is closed)
    ├── SaleEnded                        410 sale_ended
    ├── Gone                             410 gone (an endpoint that was retired)
    ├── BodyTooLarge                     413 body_too_large
    ├── UnsupportedMediaType             415 unsupported_media_type (a Content-Type or
    │                                        Content-Encoding the service does not read)
    ├── IdempotencyKeyReused             422 idempotency_key_reused
    ├── FcodeThrottled                   429 fcode_throttled (with Retry-After)
    ├── RateLimited                      429 rate_limited (with Retry-After)
    ├── HeadersTooLarge                  431 headers_too_large (and the connection is closed)
    └── Unavailable                      503 unavailable
        └── PaymentsNotConfigured        503 payments_not_configured
"""

from __future__ import annotations

from typing import ClassVar


class FlashsaleError(Exception):
    """Base of every error flashsale answers with; ``code`` is the stable machine-readable word."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "internal error"
    close_connection: ClassVar[bool] = False
    retry_after_s: int | None = None  # sent as Retry-After when set

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class InvalidRequest(FlashsaleError):
    status, code, default_message = 400, "invalid_request", "the request is not valid"


class UnreadableBody(InvalidRequest):
    """The body could not be decoded (e.g. it does not match its Content-Encoding): what follows
    on the connection cannot be trusted, so it is closed after the answer."""

    close_connection = True


class FcodeMalformed(InvalidRequest):
    code, default_message = "fcode_malformed", "this is not an F-code: check it for typos"


class Unauthorized(FlashsaleError):
    status, code, default_message = 401, "unauthorized", "a valid bearer token is required"


class SignatureInvalid(Unauthorized):
    code, default_message = (
        "invalid_signature",
        "the notification is not signed with a key of ours, or not within five minutes",
    )


class Forbidden(FlashsaleError):
    status, code, default_message = 403, "forbidden", "you may not do this"


class BookingRequired(Forbidden):
    code, default_message = (
        "booking_required",
        "only shoppers who booked may buy in this sale",
    )


class NotFound(FlashsaleError):
    status, code, default_message = 404, "not_found", "no such resource"


class SaleNotFound(NotFound):
    code, default_message = "sale_not_found", "no such sale"


class OrderNotFound(NotFound):
    code, default_message = "order_not_found", "no such order"


class BookingNotFound(NotFound):
    code, default_message = "booking_not_found", "you have no booking for this sale"


class OpeningNotOffered(NotFound):
    code, default_message = "opening_not_offered", "this sale has no opening window"


class Conflict(FlashsaleError):
    status, code, default_message = 409, "conflict", "the request conflicts with the current state"


class SaleExists(Conflict):
    code, default_message = "sale_exists", "a sale with this id already exists"


class SaleNotEditable(Conflict):
    code, default_message = (
        "sale_not_editable",
        "the sale has opened, or holds orders, bookings or F-codes: it can no longer change",
    )


class CampaignExists(Conflict):
    code, default_message = "campaign_exists", "this F-code campaign was issued already"


class SoldOut(Conflict):
    code, default_message = "sold_out", "the sale is sold out"


class LimitReached(Conflict):
    code, default_message = "limit_reached", "you already hold the most units this sale allows"


class SaleNotOpen(Conflict):
    code, default_message = "sale_not_open", "the sale is not open"


# A hint for polling clients: a pause has no announced end, and a crowd asking every few
# milliseconds would cost more than the sale itself.
PAUSED_RETRY_AFTER_S = 5


class SalePaused(SaleNotOpen):
    """The operator paused the sale; it may be resumed at any time."""

    code, default_message = (
        "sale_paused",
        "the sale is paused; it may resume at any moment, try again shortly",
    )

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = PAUSED_RETRY_AFTER_S


class OrderExpired(Conflict):
    code, default_message = (
        "order_expired",
        "the reservation expired; its units went back to the sale",
    )


class OrderCancelled(Conflict):
    code, default_message = "order_cancelled", "the order was cancelled"


class OrderPaid(Conflict):
    code, default_message = "order_paid", "the order is already paid"


class FcodeInvalid(Conflict):
    code, default_message = "fcode_invalid", "this F-code is not valid for this sale and shopper"


class FcodeUsed(Conflict):
    code, default_message = "fcode_used", "this F-code has been used"


class FcodeRevoked(Conflict):
    code, default_message = "fcode_revoked", "this F-code has been revoked"


class FcodeLaneClosed(Conflict):
    code, default_message = (
        "fcode_lane_closed",
        "the units set aside for F-codes have passed to the public sale; the code stays unused "
        "and may be honoured in a later sale",
    )


class OpeningNotDrawn(Conflict):
    """The opening window is still open: its tickets are put in order when it closes."""

    code, default_message = (
        "opening_not_drawn",
        "the opening window is still open; its order is drawn when it closes",
    )

    def __init__(self, message: str | None = None, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BookingNotOffered(Conflict):
    code, default_message = "booking_not_offered", "this sale takes no bookings"


class BookingNotOpen(Conflict):
    code, default_message = "booking_not_open", "booking has not opened yet"


class BookingClosed(Conflict):
    code, default_message = "booking_closed", "booking is closed"


class BookingFull(Conflict):
    code, default_message = "booking_full", "every booking place has been taken"


class AdmissionPassed(Conflict):
    code, default_message = (
        "admission_passed",
        "your admission window has closed; your place passed to the next in line",
    )


class SaleEnded(FlashsaleError):
    status, code, default_message = 410, "sale_ended", "the sale has ended"


class Gone(FlashsaleError):
    status, code, default_message = 410, "gone", "this endpoint was retired"


class RequestTimeout(FlashsaleError):
    """The request body came too slowly; the connection is closed after the answer."""

    status, code, default_message = 408, "request_timeout", "the request took too long to arrive"
    close_connection = True


class BodyTooLarge(FlashsaleError):
    status, code, default_message = 413, "body_too_large", "the request body is too large"


class UnsupportedMediaType(FlashsaleError):
    """The body is not JSON, or is encoded with a content coding the service does not decode."""

    status, code, default_message = (
        415,
        "unsupported_media_type",
        "send the body as application/json",
    )


class IdempotencyKeyReused(FlashsaleError):
    status, code, default_message = (
        422,
        "idempotency_key_reused",
        "this Idempotency-Key was already used with a different request",
    )


class FcodeThrottled(FlashsaleError):
    """Too many F-code guesses from this shopper or address: a pause makes guessing useless."""

    status, code, default_message = 429, "fcode_throttled", "too many wrong F-codes; wait a moment"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 60) -> None:
        super().__init__(message or f"too many wrong F-codes; try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class RateLimited(FlashsaleError):
    """More buy or book requests than the sale allows this shopper or address: wait a moment."""

    status, code, default_message = 429, "rate_limited", "too many requests; wait a moment"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 1) -> None:
        super().__init__(message or f"too many requests; try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class HeadersTooLarge(FlashsaleError):
    """A header line was longer than the HTTP parser accepts; answered for the parser, which
    refuses such a request before any handler sees it (see http/bad_requests.py)."""

    status, code, default_message = 431, "headers_too_large", "a request header is too large"
    close_connection = True


class Unavailable(FlashsaleError):
    status, code, default_message = 503, "unavailable", "a backing store is unavailable; try again"


class PaymentsNotConfigured(Unavailable):
    code, default_message = (
        "payments_not_configured",
        "payment notifications cannot be checked: FLASHSALE_PAYMENT_SECRET is not set",
    )
