"""No token or password in anything the service writes: logs, error bodies, metrics, state."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import start_ers

TOKENS = {
    "admin": "adm-7f3c9e1b2d4a",
    "alert": "alr-5e8d2c7b1a9f",
    "intake": "int-1c4b7e2a9d3f",
}


def test_tokens_never_appear_in_what_the_service_writes(tmp_path: Path) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKENS["admin"] + "\n")
    ers = start_ers(
        tmp_path,
        env={
            "ERS_ADMIN_TOKEN_FILE": str(token_file),
            "ERS_ALERT_TOKEN": TOKENS["alert"],
            "ERS_INTAKE_TOKEN": TOKENS["intake"],
            "ERS_BACKUPS_ENABLED": "true",
            "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        },
    )
    bodies: list[str] = []
    try:
        with httpx.Client(base_url=ers.url, timeout=60) as http:
            good = {"Authorization": f"Bearer {TOKENS['admin']}"}
            for token in (*TOKENS.values(), "wrong-token"):
                headers = {"Authorization": f"Bearer {token}"}
                for method, path, body in (
                    ("POST", "/api/emergency/circuit-breaker/budget/reset", {"force": True}),
                    ("POST", "/api/emergency/simulate-error", {"component": "budget", "count": 1}),
                    ("POST", "/api/emergency/backups/create", {"type": "budgets"}),
                    ("POST", "/api/emergency/test-system", None),
                ):
                    reply = http.request(method, path, json=body, headers=headers)
                    bodies.append(reply.text)
            # A chat that echoes a token back must not leak it anywhere but its own turn.
            bodies.append(http.post("/chat", json={"message": "budget report"}).text)
            bodies.append(http.get("/metrics").text)
            bodies.append(http.get("/api/emergency/status", headers=good).text)
            bodies.append(http.get("/api/emergency/health", headers=good).text)
            bodies.append(http.get("/api/emergency/circuit-breakers", headers=good).text)
    finally:
        assert ers.stop() == 0
    written = [ers.log()] + bodies
    for path in tmp_path.rglob("*"):
        secrets = (token_file, tmp_path / "restic-password")
        if path.is_file() and path not in secrets and "repo" not in path.parts:
            written.append(path.read_bytes().decode("latin-1"))
    for name, token in TOKENS.items():
        leaks = [i for i, text in enumerate(written) if token in text]
        assert leaks == [], f"the {name} token appears in {len(leaks)} outputs"
    password = (tmp_path / "restic-password").read_text().strip()
    assert password and all(password not in text for text in written if text)
