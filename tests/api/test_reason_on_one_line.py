"""An operator's reason (a forced open's, a rollback's, an incident's resolution, an
acknowledgement's note) is shown in
table rows and read to decide what to do: a line break splits the row, and a bidirectional
override reorders what is read. Both are refused, naming the character and where it is."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from service.web.routes.backups import Rollback

FORCE_OPEN = "/api/emergency/circuit-breaker/budget/force-open"


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        ("line1\nline2", "U+000A at character 6"),
        ("\u202eevil", "U+202E at character 1"),
        ("  ok\u2066x", "U+2066 at character 5"),  # counted in the text as sent
        ("mark\u200f", "U+200F at character 5"),
        ("tab\there", "U+0009 at character 4"),
        ("para\u2029graph", "U+2029 at character 5"),
        ("line\u2028sep", "U+2028 at character 5"),
        ("arabic\u061cmark", "U+061C at character 7"),
        ("esc\x1b[31m", "U+001B at character 4"),
        ("del\x7f", "U+007F at character 4"),
        ("c1\x85x", "U+0085 at character 3"),
    ],
)
async def test_a_reason_with_a_control_character_is_refused(
    client: httpx.AsyncClient, reason: str, said: str
) -> None:
    reply = await client.post(FORCE_OPEN, json={"reason": reason})
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    assert detail.startswith("reason: must be one line of plain text"), detail
    bidi = said.split()[0] in ("U+202E", "U+2066", "U+200F", "U+061C")
    kind = "bidirectional formatting" if bidi else "control"
    assert f"the {kind} character {said}; remove it" in detail
    budget = (await client.get("/api/emergency/circuit-breakers/budget")).json()
    assert budget["state"] == "closed"


async def test_a_reason_in_words_of_any_script_is_taken(client: httpx.AsyncClient) -> None:
    # Spaces around it (a trailing newline from a file) are dropped; a joiner inside an
    # emoji and right-to-left letters are text.
    reason = "\u05e9\u05d3\u05e8\u05d5\u05d2 \U0001f468\u200d\U0001f4bb deploy"
    reply = await client.post(FORCE_OPEN, json={"reason": f" {reason}\n"})
    assert reply.status_code == 200, reply.text
    budget = (await client.get("/api/emergency/circuit-breakers/budget")).json()
    assert budget["forced"]["reason"] == reason


async def test_a_resolution_with_a_control_character_is_refused(
    client: httpx.AsyncClient,
) -> None:
    reply = await client.post(
        "/api/emergency/incidents/INC_0000000000000_abcdef/resolve",
        json={"resolution": "fixed\u202e"},
    )
    assert reply.status_code == 422, reply.text
    assert "resolution: must be one line of plain text" in reply.json()["detail"]


async def test_an_acknowledgement_note_with_a_control_character_is_refused(
    client: httpx.AsyncClient,
) -> None:
    # Before: taken, and shown raw in the incident's timeline.
    url = "/api/emergency/incidents/INC_0000000000000_abcdef/acknowledge"
    reply = await client.post(url, json={"note": "looking\nat it"})
    assert reply.status_code == 422, reply.text
    assert "note: must be one line of plain text" in reply.json()["detail"]
    unknown = await client.post(url, json={"note": ""})  # blank is fine: the note is optional
    assert unknown.status_code == 404, unknown.text


def test_a_rollback_reason_with_a_control_character_is_refused() -> None:
    with pytest.raises(ValidationError, match="control character U\\+000D at character 4"):
        Rollback.model_validate({"backupId": "0123abcd", "confirm": True, "reason": "bad\rx"})
