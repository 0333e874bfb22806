"""Request bodies sent with a ``Content-Encoding``: decoded strictly, within the route's limit.

aiohttp's own decoding is turned off (``auto_decompress=False`` in ``create_app``): it takes a
gzip stream cut short for a whole one, so a garbled body could decode to nothing, read as ``{}``,
and buy a unit. Here a body must decode to the very end of its stream, with nothing after it,
and no larger than the route's ``max_bytes``, so a small bomb never expands in memory.

Codings read: ``gzip`` (and its old name ``x-gzip``), ``deflate`` (zlib-wrapped as HTTP says,
or raw as some browsers send it) and ``identity``. Brotli (``br``) and ``zstd`` are refused
with 415: nothing the service depends on decodes them.
"""

from __future__ import annotations

import zlib

from flashsale.errors import BodyTooLarge, UnreadableBody, UnsupportedMediaType

ACCEPTED_ENCODINGS = "gzip, deflate"  # the Accept-Encoding of a 415 (RFC 9110, 15.5.16)
_MAX_CODINGS = 2  # `gzip, deflate` is legal but already rare; deeper stacks only cost CPU
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer, nothing else
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_WBITS = -zlib.MAX_WBITS
_KNOWN = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}


def content_codings(headers: list[str]) -> list[str]:
    """The codings named by the ``Content-Encoding`` header lines, in the order the sender
    applied them (``identity`` dropped); 415 for one the service does not decode."""
    codings = []
    for line in headers:
        for item in line.split(","):
            name = item.strip().lower()
            if not name or name == "identity":  # empty list elements are allowed and ignored
                continue
            coding = _KNOWN.get(name)
            if coding is None:
                raise UnsupportedMediaType(
                    f"the service reads no Content-Encoding but {ACCEPTED_ENCODINGS} "
                    "and identity; send the body as one of those"
                )
            codings.append(coding)
    if len(codings) > _MAX_CODINGS:
        raise UnsupportedMediaType(
            f"a body may carry at most {_MAX_CODINGS} content codings; send it with one"
        )
    return codings


def decode(body: bytes, codings: list[str], max_bytes: int) -> bytes:
    """``body`` with ``codings`` undone, last applied first."""
    for coding in reversed(codings):
        body = _inflate(body, coding, max_bytes)
    return body


def _inflate(data: bytes, coding: str, max_bytes: int) -> bytes:
    if coding == "gzip":
        return _inflate_with(data, _GZIP_WBITS, coding, max_bytes)
    if _looks_zlib_wrapped(data):
        try:
            return _inflate_with(data, _ZLIB_WBITS, coding, max_bytes)
        except UnreadableBody:  # two bytes of raw deflate can look like a zlib header
            pass
    return _inflate_with(data, _RAW_WBITS, coding, max_bytes)


def _inflate_with(data: bytes, wbits: int, coding: str, max_bytes: int) -> bytes:
    decompressor = zlib.decompressobj(wbits)
    try:
        # one byte over the limit is enough to refuse: the rest is never expanded
        out = decompressor.decompress(data, max_bytes + 1)
    except zlib.error:
        raise UnreadableBody(f"the body is not valid {coding} data") from None
    if len(out) > max_bytes:
        raise BodyTooLarge(f"the body may hold at most {max_bytes} bytes once decoded")
    if not decompressor.eof:
        raise UnreadableBody(f"the {coding} body is cut short")
    if decompressor.unused_data:
        raise UnreadableBody(f"the {coding} body has bytes after its end")
    return out


def _looks_zlib_wrapped(data: bytes) -> bool:
    """A zlib header (RFC 1950): deflate with a window of at most 32 KiB, and a check sum."""
    return (
        len(data) >= 2
        and data[0] & 0x0F == 8
        and data[0] >> 4 <= 7
        and ((data[0] << 8) | data[1]) % 31 == 0
    )
