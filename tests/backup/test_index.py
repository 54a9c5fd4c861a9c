"""Which snapshot is the newest one from before a moment: only one whose state is still the
live state's past, never one a rollback put aside."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from backup.index import SnapshotIndex, tags_for

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ALL = ["budgets", "conversations", "profiles", "system_state"]


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def entry(name: str, minutes: int, reason: str, restores: int | None = None) -> dict[str, object]:
    restored = at(restores) if restores is not None else None
    tags = tags_for(ALL, reason, restored)
    return {"id": name * 8, "time": at(minutes).isoformat(), "tags": tags}


def newest_before(entries: list[dict[str, object]], minutes: float) -> str | None:
    index = SnapshotIndex()
    index.replace(entries)
    found = index.newest_before(at(minutes), ALL)
    return found.id[0] if found is not None else None


def test_what_a_rollback_put_aside_is_never_the_newest_snapshot_before() -> None:
    """An incident at 2, its emergency backup at 3, a rollback at 4 to the backup of 1 (its
    safety snapshot at 4): the emergency backup and the safety snapshot hold the incident's
    state, which the rollback put aside. The next incident, at 6, rolled back to one of them."""
    history = [entry("a", 1, "manual"), entry("e", 3, "emergency")]
    history.append(entry("p", 4, "pre-rollback", restores=1))
    assert newest_before(history, 6) == "a"
    # A backup taken after the rollback holds the live state.
    assert newest_before([*history, entry("s", 5, "scheduled")], 6) == "s"
    # Even for an older moment: the emergency backup's state is no longer the live state's.
    assert newest_before(history, 3.5) == "a"


def test_a_rollback_undone_brings_its_snapshots_back_into_the_live_past() -> None:
    """Undone (a rollback to its safety snapshot, at 7), the state before that rollback is
    live again, the emergency backup's state with it; what was written between the two
    rollbacks is put aside in turn."""
    history = [entry("a", 1, "manual"), entry("e", 3, "emergency")]
    history += [entry("p", 4, "pre-rollback", restores=1), entry("s", 5, "scheduled")]
    history.append(entry("q", 7, "pre-rollback", restores=4))
    assert newest_before(history, 8) == "e"


def test_a_safety_snapshot_without_the_time_it_restores_is_left_out_alone() -> None:
    """Written before safety snapshots named it: nothing else is known to be put aside."""
    history = [entry("a", 1, "manual"), entry("e", 3, "emergency"), entry("p", 4, "pre-rollback")]
    assert newest_before(history, 6) == "e"
