"""The OpenAPI document states the limits the service enforces and the shape of its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from service.web.app import create_app
from tests.api.test_access import serving


@pytest.mark.parametrize("limit", [None, 250])
async def test_message_max_length_is_the_enforced_limit(
    tmp_path: Path, settings: Settings, limit: int | None
) -> None:
    if limit is not None:
        settings = settings.model_copy(update={"max_message_chars": limit})
    enforced = settings.max_message_chars
    async with serving(settings, host="127.0.0.1") as http:
        document = (await http.get("/openapi.json")).json()
        message = document["components"]["schemas"]["ChatRequest"]["properties"]["message"]
        assert message["maxLength"] == enforced == (limit or 4000)
        at_limit = await http.post("/chat", json={"message": "a" * enforced})
        assert at_limit.status_code == 200, at_limit.text
        over = await http.post("/chat", json={"message": "a" * (enforced + 1)})
        assert over.status_code == 422
        assert f"the limit is {enforced}, so shorten it or split it up" in over.json()["detail"]


def test_every_error_reply_is_documented_as_error_body(settings: Settings) -> None:
    document = create_app(settings).openapi()
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["ErrorBody"]["required"] == ["detail"]
    # The probes' 503 carries their own report, not an error body.
    own_reports = {("/readyz", "get"), ("/api/emergency/health", "get")}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) < 400 or (path, method) in own_reports:
                    continue
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, status)


def test_oversized_bodies_are_documented_with_the_configured_limit(
    settings: Settings,
) -> None:
    document = create_app(settings.model_copy(update={"max_body_bytes": 4096})).openapi()
    chat = document["paths"]["/chat"]["post"]["responses"]
    assert "4096 bytes" in chat["413"]["description"]
    assert "413" not in document["paths"]["/livez"]["get"]["responses"]


def _bounds_of(schema: Any) -> list[tuple[str, ...]]:
    """Every numeric schema's keys, walked through the whole document."""
    found: list[tuple[str, ...]] = []
    if isinstance(schema, dict):
        if schema.get("type") in ("integer", "number"):
            found.append(tuple(sorted(schema)))
        for value in schema.values():
            found += _bounds_of(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _bounds_of(value)
    return found


async def test_the_bounds_of_fields_that_may_be_null_are_json_schema_bounds(
    settings: Settings,
) -> None:
    """Bounds on a field that may be null came out as pydantic's own ge/le/gt keys, which
    no JSON Schema reader knows: /docs showed no limit for a profile's age, weight and
    height, a forced open's ttlSeconds or a simulated error's count."""
    async with serving(settings, host="127.0.0.1") as http:
        document = (await http.get("/openapi.json")).json()
        schemas = document["components"]["schemas"]
        for keys in _bounds_of(document):
            assert not {"ge", "le", "gt", "lt"} & set(keys), keys
        age = schemas["ProfileUpdate"]["properties"]["age"]["anyOf"][0]
        assert (age["minimum"], age["maximum"]) == (10, 110)
        weight = schemas["ProfileUpdate"]["properties"]["weightKg"]["anyOf"][0]
        assert (weight["exclusiveMinimum"], weight["maximum"]) == (20, 400)
        ttl = schemas["ForceOpenRequest"]["properties"]["ttlSeconds"]["anyOf"][0]
        assert ttl["exclusiveMinimum"] == 0 and ttl["maximum"] == 7 * 24 * 3600
        count = schemas["SimulateError"]["properties"]["count"]
        assert count["anyOf"][0]["maximum"] == 10_000
        assert count["description"] == "failing calls; default: all"
        # Still enforced, and still in the fields' own words.
        too_old = await http.put("/api/profiles/u1", json={"age": 111})
        assert too_old.status_code == 422 and "less than or equal to 110" in too_old.text
        quoted = await http.put("/api/profiles/u1", json={"age": "30"})
        assert quoted.status_code == 422 and "without quotes" in quoted.text
        fine = await http.put("/api/profiles/u1", json={"age": 30, "weightKg": 80})
        assert fine.status_code == 200 and fine.json()["age"] == 30
        forever = await http.post(
            "/api/emergency/circuit-breaker/workout/force-open",
            json={"reason": "r", "ttlSeconds": 10**9},
        )
        assert forever.status_code == 422
