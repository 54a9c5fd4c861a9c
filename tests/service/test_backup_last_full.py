"""When the whole state was last backed up decides whether the schedule takes a full backup."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from service.backups.service import BackupService


def service_over(snapshots: list[tuple[float, tuple[str, ...]]], one_each: bool) -> BackupService:
    backend = SimpleNamespace(
        components=("budgets", "profiles"), one_component_per_snapshot=one_each
    )
    listed = [
        SimpleNamespace(time=datetime.fromtimestamp(at, UTC), components=components)
        for at, components in snapshots
    ]
    service = BackupService.__new__(BackupService)
    service.state = SimpleNamespace(one_component_per_snapshot=one_each)  # type: ignore[assignment]
    config = SimpleNamespace(one_component_per_snapshot=one_each)
    service.manager = SimpleNamespace(backend=backend, config=config, list=lambda: listed)  # type: ignore[assignment]
    return service


def test_one_snapshot_per_component_counts_as_full_once_every_component_has_one() -> None:
    # A pg_dump per schema: no snapshot ever holds every component, so before this the
    # schedule took a full backup of every schema on every tick.
    partial = service_over([(100.0, ("budgets",))], one_each=True)
    assert partial.last_full() is None
    both = service_over(
        [(100.0, ("budgets",)), (101.0, ("profiles",)), (500.0, ("budgets",))], one_each=True
    )
    assert both.last_full() == 101.0


def test_files_count_as_full_only_in_a_snapshot_holding_every_component() -> None:
    service = service_over(
        [(100.0, ("budgets", "profiles")), (200.0, ("budgets",))], one_each=False
    )
    assert service.last_full() == 100.0
    assert service_over([(200.0, ("budgets",))], one_each=False).last_full() is None
