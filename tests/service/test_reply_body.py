"""A remote agent's reply is read up to the limit of decoded bytes without inflating more: a
small gzip body that inflates to hundreds of megabytes is found over the limit with a few
megabytes of memory, not with the whole first chunk inflated."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import httpx
import pytest

from service.agents.reply_body import read_at_most

LIMIT = 1_048_576
BOMB = gzip.compress(b"a" * 200_000_000, 9)  # some 200 KB on the wire


def reply(body: bytes, encoding: str | None = None) -> httpx.Response:
    headers = {"content-encoding": encoding} if encoding else {}
    return httpx.Response(200, headers=headers, stream=httpx.ByteStream(body))


async def test_a_gzip_bomb_is_over_the_limit_without_being_inflated() -> None:
    tracemalloc.start()
    try:
        found = await read_at_most(reply(BOMB, "gzip"), LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found is None
    # Before: the chunk was inflated whole, 200 MB.
    assert peak < 8 * LIMIT, peak


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        (None, b'{"response": "hi"}'),
        ("identity", b'{"response": "hi"}'),
        ("gzip", gzip.compress(b'{"response": "hi"}')),
        ("x-gzip", gzip.compress(b'{"response": "hi"}')),
        ("GZIP", gzip.compress(b'{"response": "hi"}')),
        ("deflate", zlib.compress(b'{"response": "hi"}')),
        ("deflate", zlib.compress(b'{"response": "hi"}')[2:-4]),  # raw, without zlib's header
    ],
)
async def test_an_answer_within_the_limit_is_decoded(encoding: str | None, body: bytes) -> None:
    assert await read_at_most(reply(body, encoding), LIMIT) == b'{"response": "hi"}'


async def test_the_limit_is_on_the_decoded_bytes() -> None:
    exactly = b"a" * LIMIT
    assert await read_at_most(reply(gzip.compress(exactly), "gzip"), LIMIT) == exactly
    assert await read_at_most(reply(gzip.compress(exactly + b"a"), "gzip"), LIMIT) is None
    assert await read_at_most(reply(exactly + b"a"), LIMIT) is None


async def test_a_body_that_does_not_decode_raises_httpx_decoding_error() -> None:
    with pytest.raises(httpx.DecodingError):
        await read_at_most(reply(b"\x1f\x8bnot really gzip", "gzip"), LIMIT)


async def test_stacked_encodings_are_left_to_httpx() -> None:
    body = gzip.compress(gzip.compress(b'{"response": "hi"}'))
    assert await read_at_most(reply(body, "gzip, gzip"), LIMIT) == b'{"response": "hi"}'
