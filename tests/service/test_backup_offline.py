"""The offline rollback's audit trail: tried again while its database is back within a few
seconds, and else told once, on stderr, as the entry to record by hand."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from backup.events import EventPublisher
from backup.models import RollbackResult
from service.cli.backup_offline import _offline_rollback
from service.cli.offline_trail import OfflineTrail
from service.errors import StoreUnavailable
from service.stores.conversations import ConversationStore


class Audit:
    """An audit trail whose database is down for the first `down_for` writes."""

    def __init__(self, down_for: int) -> None:
        self.down_for = down_for
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def record(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        if self.down_for:
            self.down_for -= 1
            raise StoreUnavailable("incidents", "the database at db:5432 went away")
        self.entries.append((actor, action, detail))


class Manager:
    def __init__(self) -> None:
        self.events = EventPublisher()

    async def rollback(self, snapshot_id: str, *args: Any, **kwargs: Any) -> RollbackResult:
        return RollbackResult(
            snapshot_id=f"{snapshot_id}{'0' * 56}",
            components=("budgets",),
            reason="bad data",
            safety_snapshot_id="5afe7y00" + "1" * 56,
            step_seconds={},
            duration_seconds=1.0,
        )


class Progress:
    def stage(self, description: str) -> None:
        pass

    def restic_status(self, status: Any) -> None:
        pass


ARGS = argparse.Namespace(backup_id="3f2a1b4c", components=None, reason="bad data")


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The rollback forgets replies in the conversations store of this data directory."""
    monkeypatch.setenv("ERS_DATA_DIR", str(tmp_path))
    return tmp_path


async def roll_back(trail: OfflineTrail) -> dict[str, Any]:
    return await _offline_rollback(ARGS, Manager(), Progress(), trail)  # type: ignore[arg-type]


async def test_a_trail_back_within_its_retries_holds_the_rollback_and_nothing_is_said(
    capsys: pytest.CaptureFixture[str],
) -> None:
    audit = Audit(down_for=2)
    reply = await roll_back(OfflineTrail(audit, retry_for_s=60, pause_s=0))

    assert [action for _, action, _ in audit.entries] == ["rollback_started", "rollback"]
    assert audit.entries[-1][2]["safetyBackupId"] == reply["safetyBackupId"]
    assert "auditTrailError" not in reply and reply["restored"] == []
    assert capsys.readouterr().err == ""


async def test_a_trail_still_down_is_told_once_on_stderr_with_the_entry_to_record(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: the warning was logged, and appended to the `restored` list as well (twice on
    the terminal, and inside `restored` in `-o json`); the trail was never tried again."""
    trail = OfflineTrail(Audit(down_for=1_000), retry_for_s=0, pause_s=0)
    reply = await roll_back(trail)
    trail.tell()  # as the trail's end does: still said once

    assert reply["restored"] == []
    said = reply["auditTrailError"]
    assert said.startswith("the rollback is not in the audit trail: writing it failed (")
    assert "went away" in said
    entry = json.loads(said.split("action rollback, detail ", 1)[1])
    assert entry["safetyBackupId"] == reply["safetyBackupId"] and entry["error"] is None
    assert entry["backupId"] == reply["backupId"] and entry["reason"] == "bad data"
    assert capsys.readouterr().err.splitlines() == [f"ers: {said}"]
    json.dumps(reply)  # well-formed for -o json


async def test_a_ctrl_c_while_the_replies_are_forgotten_tells_the_rollback_as_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = asyncio.Event()

    def forgetting(self: Any, component: str) -> Any:
        async def forget() -> list[str]:
            started.set()
            await asyncio.sleep(60)  # a database slow to answer
            return []

        return forget

    monkeypatch.setattr(ConversationStore, "replies_forgetting", forgetting)
    audit = Audit(down_for=0)
    rolling = asyncio.create_task(roll_back(OfflineTrail(audit)))
    await started.wait()
    rolling.cancel()  # as the command's Ctrl-C does
    reply = await rolling

    # Before: "interrupted before it began: nothing was changed", for a rollback done.
    assert reply["safetyBackupId"] and audit.entries[-1][1] == "rollback"
    assert audit.entries[-1][2]["error"] is None
    [note] = reply["restored"]
    assert note.startswith("the replies remembered for Idempotency-Keys that wrote to budgets")
    assert "could not be forgotten (interrupted)" in note
