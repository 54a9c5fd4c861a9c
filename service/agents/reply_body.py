"""A remote agent's reply body, read up to a number of decoded bytes without decoding more.

httpx's gzip and deflate decoders inflate each chunk read off the socket whole: a reply of
500 KB that inflates to 500 MB took some 130 MB of memory (per call at once) before the
first decoded chunk could be found over the limit. Here a gzip or deflate body is inflated
with zlib's own bound, so nothing past the limit is ever made.
"""

from __future__ import annotations

import zlib

import httpx

# Encodings inflated here with a bound; any other (br or zstd, when their packages are
# installed, or several encodings stacked) is left to httpx's decoders.
INFLATED = ("gzip", "x-gzip", "deflate")


class _Inflate:
    """httpx's GZipDecoder and DeflateDecoder (a zlib stream, else raw deflate), bounded."""

    def __init__(self, encoding: str) -> None:
        self._retry_raw = encoding == "deflate"
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | (0 if self._retry_raw else 16))

    def decode(self, data: bytes, most: int) -> bytes:
        try:
            inflated = self._zlib.decompress(data, most)
        except zlib.error as exc:
            if not self._retry_raw:
                raise httpx.DecodingError(str(exc)) from exc
            self._retry_raw = False  # deflate without its zlib header, as some servers send
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            return self.decode(data, most)
        self._retry_raw = False
        return inflated


async def read_at_most(response: httpx.Response, limit: int) -> bytes | None:
    """The decoded body, or None when it is longer than ``limit`` (the rest is neither read
    nor inflated). A body that does not decode raises httpx.DecodingError."""
    said = response.headers.get("content-encoding", "").lower().split(",")
    encodings = [name.strip() for name in said if name.strip() not in ("", "identity")]
    inflate = None
    if encodings and (len(encodings) > 1 or encodings[0] not in INFLATED):
        chunks = response.aiter_bytes()
    else:
        chunks = response.aiter_raw()
        inflate = _Inflate(encodings[0]) if encodings else None
    read: list[bytes] = []
    size = 0
    async for chunk in chunks:
        if inflate is not None:  # at most one byte past the limit: enough to know
            chunk = inflate.decode(chunk, limit + 1 - size)
        size += len(chunk)
        if size > limit:
            return None
        read.append(chunk)
    return b"".join(read)
