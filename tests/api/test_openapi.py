"""The OpenAPI document states the limits the service enforces and the shape of its errors."""

from __future__ import annotations

from pathlib import Path

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
