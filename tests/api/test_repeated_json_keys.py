"""A JSON body that gives one key twice in an object is refused with a 422 naming the key:
``json.loads`` keeps the last value, so ``{"confirm": false, "confirm": true}`` was a
confirmed rollback and a chat's second ``message`` was the one recorded, while a proxy, a
log or a person reading the first saw another request."""

from __future__ import annotations

import httpx
import pytest

from tests.api.test_access import operations, url_of

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    "method,url,body,key",
    [
        (
            "POST",
            "/chat",
            b'{"message": "plan my meals", "userId": "u1", "message": "hi"}',
            "message",
        ),
        (
            "POST",
            "/api/emergency/rollback",
            b'{"backupId": "641cdd84", "reason": "x", "confirm": false, "confirm": true}',
            "confirm",
        ),
        (
            "POST",
            "/api/emergency/alerts",
            b'{"version": "4", "status": "firing", "alerts": [{"status": "firing", '
            b'"labels": {"alertname": "ErsAgentDown", "alertname": "Other"}}]}',
            "alertname",
        ),
        ("POST", "/chat", b'{"message": "hi", "userId": "u1", "\\u0075serId": "u2"}', "userId"),
    ],
    ids=["chat", "rollback-confirm", "nested", "escaped"],
)
async def test_a_key_given_twice_is_refused_naming_it(
    client: httpx.AsyncClient, method: str, url: str, body: bytes, key: str
) -> None:
    reply = await client.request(method, url, content=body, headers=JSON)
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert detail.startswith(f'the request body gives the key "{key}" more than once'), detail
    assert "give each key once" in detail


async def test_a_chat_with_a_key_given_twice_records_nothing(client: httpx.AsyncClient) -> None:
    body = b'{"message": "spent $12 on lunch", "userId": "u9", "message": "hello"}'
    assert (await client.post("/chat", content=body, headers=JSON)).status_code == 422
    history = await client.get("/api/profiles/u9")
    assert history.status_code == 404, history.text


async def test_keys_given_once_each_in_several_objects_are_read_as_before(
    client: httpx.AsyncClient,
) -> None:
    # The same key in two objects is two keys ("status" of the notification and of its
    # alert, "alertname" of its labels and its common labels); one object repeating one is
    # refused.
    body = (
        b'{"version": "4", "groupKey": "{}", "status": "firing", "receiver": "ers",'
        b' "commonLabels": {"alertname": "ErsKeysTest"}, "alerts": [{"status": "firing",'
        b' "labels": {"alertname": "ErsKeysTest"}, "startsAt": "2026-12-05T10:00:00Z",'
        b' "fingerprint": "abc123"}]}'
    )
    reply = await client.post("/api/emergency/alerts", content=body, headers=JSON)
    assert reply.status_code == 200, reply.text


async def test_every_operation_that_takes_a_body_refuses_a_key_given_twice(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    checked = []
    for method, path, operation in operations(document):
        if "requestBody" not in operation or path == "/v1/traces":  # OTLP: its own decoder
            continue
        body = b'{"reason": "a", "reason": "b"}'
        reply = await client.request(method, url_of(path), content=body, headers=JSON)
        assert reply.status_code == 422, f"{method} {path}: {reply.text}"
        assert reply.json()["detail"].startswith('the request body gives the key "reason"')
        checked.append(path)
    assert len(checked) >= 8, checked


async def test_a_body_with_two_content_types_is_refused(client: httpx.AsyncClient) -> None:
    """Before, FastAPI read the first Content-Type and took the body as JSON, while a proxy
    or a log reading the other saw text; a repeated Authorization or Idempotency-Key header
    was refused already."""
    headers = [("content-type", "application/json"), ("content-type", "text/plain")]
    body = b'{"message": "spent $12 on lunch", "userId": "u8"}'
    reply = await client.post("/chat", content=body, headers=headers)
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"] == (
        "the request carries 2 Content-Type headers; send one, Content-Type: application/json"
    )
    assert (await client.get("/api/profiles/u8")).status_code == 404  # nothing recorded
