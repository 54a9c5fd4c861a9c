"""What a user may type, over a real uvicorn process on PostgreSQL: text PostgreSQL cannot
store is the user's mistake (422), not an outage of the store."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import start_ers


def test_a_nul_in_a_message_is_a_422_and_no_database_incident(tmp_path: Path, pg_url: str) -> None:
    ers = start_ers(tmp_path / "ers", env={"ERS_DATABASE_URL": pg_url})
    try:
        with httpx.Client(base_url=ers.url, timeout=15) as http:
            for message in ("plan my meals\u0000", "spent $3 on food\u0000"):
                reply = http.post("/chat", json={"message": message, "userId": "u1"})
                assert reply.status_code == 422, reply.text
                assert "NUL character" in reply.json()["detail"]
            assert http.get("/api/emergency/incidents").json()["total"] == 0
            fine = http.post("/chat", json={"message": "spent $3 on food", "userId": "u1"})
            assert fine.status_code == 200, fine.text
    finally:
        ers.stop()
