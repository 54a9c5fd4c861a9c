"""When the backups last ran, as the snapshot list says: each component's newest snapshot,
and the newest that holds the whole state (the schedule's full backup goes by it)."""

from __future__ import annotations

from backup import BackupManager


def newest_per_component(manager: BackupManager | None) -> dict[str, float]:
    """The newest snapshot time per component, from the index and this run's backups."""
    if manager is None:
        return {}
    newest: dict[str, float] = {}
    for snapshot in manager.list():
        for component in snapshot.components:
            at = snapshot.time.timestamp()
            newest[component] = max(newest.get(component, 0.0), at)
    for component, at in manager.status().last_success.items():
        newest[component] = max(newest.get(component, 0.0), at.timestamp())
    return newest


def newest_full(manager: BackupManager | None) -> float | None:
    """When the whole state was last backed up: the newest snapshot holding every component
    or, where a snapshot holds one component (PostgreSQL), the oldest of the components'
    newest snapshots (None until each component has one)."""
    if manager is None:
        return None
    wanted = set(manager.backend.components)
    snapshots = manager.list()
    if manager.config.one_component_per_snapshot:
        newest: dict[str, float] = {}
        for snapshot in snapshots:
            for component in set(snapshot.components) & wanted:
                at = snapshot.time.timestamp()
                newest[component] = max(newest.get(component, at), at)
        return min(newest.values()) if newest.keys() == wanted else None
    times = [s.time.timestamp() for s in snapshots if wanted <= set(s.components)]
    return max(times, default=None)
