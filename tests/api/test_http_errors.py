"""Bodies that cannot be read and values of the wrong type get the 422 every other invalid
request gets: the same shape, and words that say what to send instead."""

from __future__ import annotations

import httpx
import pytest

JSON = {"content-type": "application/json"}


async def test_a_validation_error_and_an_unreadable_body_share_one_shape(
    client: httpx.AsyncClient,
) -> None:
    invalid = await client.post("/chat", json={"message": "hi", "colour": "red"})
    for body in (
        b'{"message": ',
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b'{"message": "\xff\xfe plan my meals"}',
    ):
        unreadable = await client.post("/chat", content=body, headers=JSON)
        assert unreadable.status_code == invalid.status_code == 422, unreadable.text
        assert unreadable.json().keys() == invalid.json().keys() == {"error", "detail", "problems"}
        assert unreadable.json()["error"] == invalid.json()["error"] == "invalid request"


@pytest.mark.parametrize(
    "body,expected",
    [
        (b'{"message": ', "not valid JSON (Expecting value at character 12); check quotes"),
        (b"[" * 10_000 + b"]" * 10_000, "nests arrays or objects too deeply to read"),
        (b'{"message": "\xff plan"}', "not valid UTF-8 (byte 0xff at offset 13)"),
        # Python's own ValueError (not a JSONDecodeError) was a 400 "error parsing the body".
        (b'{"age": ' + b"1" * 5000 + b"}", "has more than 4300 digits; send it shorter"),
    ],
    ids=["truncated", "depth-10000", "latin-1", "5000-digits"],
)
async def test_an_unreadable_body_is_named(
    client: httpx.AsyncClient, body: bytes, expected: str
) -> None:
    reply = await client.put("/api/profiles/u1", content=body, headers=JSON)
    assert reply.status_code == 422
    assert expected in reply.json()["detail"]


@pytest.mark.parametrize(
    "method,url,body,status,error",
    [
        ("POST", "/v1/traces", "not json", 400, "bad request"),
        (
            "POST",
            "/api/emergency/rollback",
            {"backupId": "641cdd84", "reason": "x", "confirm": True},
            503,
            "service unavailable",
        ),
        ("GET", "/api/emergency/incidents/INC_1796294115000_ab12cd", None, 404, "not found"),
        ("GET", "/no/such/page", None, 404, "not found"),
        ("DELETE", "/chat", None, 405, "method not allowed"),
    ],
    ids=["bad-otlp", "backups-off", "unknown-incident", "unknown-path", "wrong-method"],
)
async def test_every_refusal_has_the_shape_of_a_validation_error(
    client: httpx.AsyncClient, method: str, url: str, body: object, status: int, error: str
) -> None:
    """A client reads one shape for every 4xx: what kind of refusal, and what to do."""
    if isinstance(body, str):
        # A protobuf request's refusal is a google.rpc.Status, as OTLP/HTTP has it.
        headers = {"content-type": "application/json"}
        reply = await client.request(method, url, content=body.encode(), headers=headers)
    else:
        reply = await client.request(method, url, json=body)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"] == error
    assert reply.json()["detail"]
    if status == 405:
        assert reply.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "method,url,body,expected",
    [
        (
            "PUT",
            "/api/profiles/u1",
            {"weightKg": False},
            "weightKg: must be a number (a JSON number such as 60 or 2.5, without quotes), "
            "not the boolean false",
        ),
        (
            "POST",
            "/api/emergency/circuit-breaker/budget/force-open",
            {"reason": "x", "ttlSeconds": True},
            "ttlSeconds: must be a number",
        ),
        (
            "POST",
            "/api/emergency/alerts",
            {
                "version": "4",
                "groupKey": "k",
                "status": "firing",
                "receiver": "ers",
                "truncatedAlerts": True,
                "alerts": [
                    {
                        "status": "firing",
                        "labels": {},
                        "startsAt": "2024-01-01T00:00:00Z",
                        "fingerprint": "f1",
                    }
                ],
            },
            "truncatedAlerts: must be a whole number, not the boolean true",
        ),
        ("GET", "/api/emergency/metrics?timeRange=true", None, "timeRange: must be a number"),
        ("GET", "/api/emergency/incidents?limit=1.5", None, "limit: must be a whole number"),
        ("GET", "/api/emergency/health?refresh=maybe", None, "refresh: must be true or false"),
        (
            "GET",
            "/api/emergency/incidents?since=yesterday",
            None,
            "since: must be a time in ISO 8601, such as 2026-12-03T07:30:00Z or 2026-12-03 (",
        ),
    ],
    ids=[
        "weight-false",
        "ttl-true",
        "truncatedAlerts-true",
        "timeRange",
        "limit",
        "refresh",
        "since",
    ],
)
async def test_a_value_of_the_wrong_type_says_what_it_must_be(
    client: httpx.AsyncClient, method: str, url: str, body: object, expected: str
) -> None:
    reply = await client.request(method, url, json=body)
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert expected in detail
    # A boolean is never read as 0 or 1 and then found out of range.
    assert "greater" not in detail and "less" not in detail


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(
    "url,template,field",
    [
        ("/api/profiles/u1", '{"weightKg": TOKEN}', "weightKg"),
        ("/api/profiles/u1", '{"heightCm": TOKEN}', "heightCm"),
        (
            "/api/emergency/circuit-breaker/budget/force-open",
            '{"reason": "x", "ttlSeconds": TOKEN}',
            "ttlSeconds",
        ),
        (
            "/api/emergency/simulate-error",
            '{"component": "budget", "errorType": "agent", "failureRate": TOKEN}',
            "failureRate",
        ),
    ],
    ids=["weight", "height", "ttl", "failure-rate"],
)
async def test_a_number_that_is_not_finite_is_named_as_such(
    client: httpx.AsyncClient, url: str, template: str, field: str, token: str
) -> None:
    """Python's JSON reader takes NaN and Infinity; a range check would then answer "must be
    less than or equal to 400" for a NaN, which sends the client looking in the wrong place."""
    method = "PUT" if url.startswith("/api/profiles") else "POST"
    body = template.replace("TOKEN", token).encode()
    reply = await client.request(method, url, content=body, headers=JSON)
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert f"{field}: must be a finite number" in detail, detail
    assert "not NaN or infinity" in detail
    assert "greater" not in detail and "less" not in detail


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "/api/emergency/incidents/INC_nope",
            "incident_id: 'INC_nope' is not an incident id like INC_1796294115000_ab12cd "
            "(see `ers incidents list`)",
        ),
        (
            "/api/emergency/traces/deadbeef",
            "trace_id: 'deadbeef' is not a trace id of 32 lowercase hex characters",
        ),
    ],
    ids=["incident", "trace"],
)
async def test_an_id_of_the_wrong_shape_says_what_one_looks_like(
    client: httpx.AsyncClient, url: str, expected: str
) -> None:
    reply = await client.get(url)
    assert reply.status_code == 422, reply.text
    assert expected in reply.json()["detail"]
    assert "String should match pattern" not in reply.text


def test_a_check_of_the_whole_body_is_said_without_pydantic_words() -> None:
    from pydantic import ValidationError

    from service.web.http_errors import describe
    from service.web.routes.backups import Rollback

    both = {
        "backupId": "85453c5b",
        "beforeIncident": "INC_1796294115000_ab12cd",
        "confirm": True,
        "reason": "bad data",
    }
    with pytest.raises(ValidationError) as refused:
        Rollback.model_validate(both)
    # As FastAPI reports it: the error's location starts at the body.
    errors = [{**e, "loc": ("body", *e["loc"])} for e in refused.value.errors()]
    assert [describe(e) for e in errors] == ["give exactly one of backupId or beforeIncident"]
