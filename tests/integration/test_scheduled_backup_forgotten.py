"""A scheduled backup reads the snapshot list before it judges the state unchanged: a
snapshot forgotten by hand (`restic forget`) stayed in the list in memory until its next
refresh (every 300 s by default), so the state it held passed for backed up and the
scheduled backup made nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from backup import BackupManager, RepositoryConfig
from service.backups.jobs import _due_backups
from tests.conftest import run_restic
from tests.integration.conftest import COMPONENTS


class Scheduled:
    """What the schedule reads of BackupService, over a real manager: every backup is due."""

    def __init__(self, manager: BackupManager) -> None:
        self.manager = manager
        self.intervals_s = dict.fromkeys(COMPONENTS, 3600.0)
        self.full_interval_s = 86400.0
        self.settings = SimpleNamespace(max_backups=50)

    def last_success(self) -> dict[str, float]:
        return dict.fromkeys(COMPONENTS, time.time() - 7200)

    def last_full(self) -> float:
        return time.time() - 7200

    async def create(self, components: list[str] | None, reason: str) -> Any:
        return await self.manager.create(components, reason)

    def require(self) -> BackupManager:
        return self.manager


def snapshots(config: RepositoryConfig) -> list[dict[str, Any]]:
    listed = run_restic(Path(config.repository), config.password_file, "snapshots", "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


async def test_a_snapshot_forgotten_by_hand_does_not_pass_for_the_state_backed_up(
    manager: BackupManager, repository_config: RepositoryConfig
) -> None:
    first = await manager.create(None, "scheduled")
    assert first.snapshot_id is not None
    forgot = run_restic(
        Path(repository_config.repository),
        repository_config.password_file,
        "forget",
        first.snapshot_id,
    )
    assert forgot.returncode == 0, forgot.stderr
    assert snapshots(repository_config) == []

    assert await _due_backups(Scheduled(manager)) is True  # type: ignore[arg-type]

    [made] = snapshots(repository_config)
    assert made["id"] != first.snapshot_id
    assert "reason:scheduled" in made["tags"]
