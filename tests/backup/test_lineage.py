"""The snapshots a rollback may go back to: only those the live state grew from."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from backup.lineage import newest_on_line, restored_by
from backup.models import Snapshot

T0 = datetime(2026, 12, 1, tzinfo=UTC)
BOTH = ("budgets", "conversations")


def snap(
    name: str, minute: int, components: Sequence[str] = BOTH, restores: str | None = None
) -> Snapshot:
    reason = "pre-rollback" if restores is not None or name.startswith("safety") else "manual"
    tags = (f"reason:{reason}", *([f"restores:{restores}"] if restores else []))
    return Snapshot(name, name[:8], T0 + timedelta(minutes=minute), tuple(components), reason, tags)


def newest(snapshots: list[Snapshot], minute: int, components: Sequence[str] = BOTH) -> str | None:
    ordered = sorted(snapshots, key=lambda s: s.time, reverse=True)
    found = newest_on_line(ordered, T0 + timedelta(minutes=minute), components)
    return found.id if found is not None else None


def test_without_rollbacks_the_newest_snapshot_before_the_moment() -> None:
    snapshots = [snap("a", 1), snap("b", 2), snap("c", 5)]
    assert newest(snapshots, 4) == "b"
    assert newest(snapshots, 1) is None


def test_the_snapshots_a_rollback_put_aside_are_passed_over_for_the_one_it_restored() -> None:
    snapshots = [snap("good", 1), snap("bad", 2), snap("safety1", 3, restores="good")]
    assert newest(snapshots, 10) == "good"
    assert newest([*snapshots, snap("after", 4)], 10) == "after"
    assert newest(snapshots, 3) == "bad"  # before the rollback, it was the live state


def test_an_undo_brings_the_put_aside_line_back() -> None:
    snapshots = [
        snap("good", 1),
        snap("bad", 2),
        snap("safety1", 3, restores="good"),
        snap("mid", 4),
        snap("safety2", 5, restores="safety1"),
    ]
    assert newest(snapshots, 10) == "safety1"
    assert newest([s for s in snapshots if s.id != "safety1"], 10) is None  # forgotten


def test_a_chain_of_rollbacks_is_walked_back() -> None:
    snapshots = [
        snap("a", 1),
        snap("b", 2),
        snap("c", 3),
        snap("safety1", 4, restores="b"),  # c put aside
        snap("d", 5),
        snap("safety2", 6, restores="a"),  # b and d put aside
    ]
    assert newest(snapshots, 10) == "a"
    assert newest(snapshots, 6) == "d"
    assert newest(snapshots, 5) == "b"


def test_a_rollback_of_one_component_leaves_the_others_line_alone() -> None:
    snapshots = [
        snap("good", 1),
        snap("bad", 2),
        snap("safety1", 3, ["budgets"], restores="good"),
    ]
    assert newest(snapshots, 10, ["conversations"]) == "bad"
    assert newest(snapshots, 10, ["budgets"]) == "good"
    assert newest(snapshots, 10, BOTH) == "good"  # bad's budgets were put aside


def test_a_safety_snapshot_without_a_restored_snapshot_is_never_taken() -> None:
    untagged = snap("safety-old", 3)
    assert restored_by(untagged) is None
    assert newest([snap("a", 1), untagged], 10) == "a"
