"""A JSON body sent with a Content-Encoding is refused with a 422 naming the coding: ERS
decodes none, so a gzipped chat was refused as "not valid UTF-8 (byte 0x8b)", which names
no cause, and a plain body labelled gzip was taken as if the label were not there."""

from __future__ import annotations

import gzip

import httpx
import pytest

BODY = b'{"message": "spent $25 on groceries", "userId": "enc1"}'


@pytest.mark.parametrize(
    "coding,content",
    [("gzip", gzip.compress(BODY)), ("br", BODY), ("identity, gzip", gzip.compress(BODY))],
    ids=["gzipped", "labelled-only", "listed"],
)
async def test_an_encoded_body_is_refused_naming_the_coding(
    client: httpx.AsyncClient, coding: str, content: bytes
) -> None:
    headers = {"content-type": "application/json", "content-encoding": coding}
    reply = await client.post("/chat", content=content, headers=headers)
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert detail.startswith("the request body is sent with Content-Encoding"), detail
    assert coding.split(", ")[-1] in detail and "send the JSON uncompressed" in detail
    report = await client.post("/chat", json={"message": "budget report", "userId": "enc1"})
    assert report.status_code == 200, report.text
    assert "no budgets yet" in report.json()["response"]


async def test_identity_is_no_encoding(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json", "content-encoding": "identity"}
    reply = await client.post("/chat", content=BODY, headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["response"].startswith("Recorded $25.00")
