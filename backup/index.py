"""The snapshot list kept in memory, so serving it never waits for restic (about a second)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from backup.errors import SnapshotNotFound
from backup.inputs import validate_snapshot_id
from backup.lineage import RollbackMark, newest_on_line
from backup.locks import parse_restic_time
from backup.models import Snapshot

if TYPE_CHECKING:
    from backup.restic import Restic

ERS_TAG = "ers"
COMPONENT_TAG = "component:"
REASON_TAG = "reason:"


def tags_for(components: Iterable[str], reason: str) -> list[str]:
    return [ERS_TAG, *(f"{COMPONENT_TAG}{c}" for c in components), f"{REASON_TAG}{reason}"]


def snapshot_from_restic(entry: dict[str, Any]) -> Snapshot:
    tags = tuple(entry.get("tags") or ())
    reasons = [t[len(REASON_TAG) :] for t in tags if t.startswith(REASON_TAG)]
    return Snapshot(
        id=entry["id"],
        short_id=entry.get("short_id", entry["id"][:8]),
        time=parse_restic_time(entry.get("time", "")) or datetime.fromtimestamp(0, UTC),
        components=tuple(
            sorted(t[len(COMPONENT_TAG) :] for t in tags if t.startswith(COMPONENT_TAG))
        ),
        reason=reasons[0] if reasons else None,
        tags=tags,
        hostname=entry.get("hostname", ""),
    )


def retained(
    entries: Iterable[dict[str, Any]], keep_last: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Restic's snapshot ``entries`` split into those retention keeps and those it forgets:
    a snapshot is kept while it is one of the newest ``keep_last`` holding any component it
    holds, so a component backed up alone and often (a ``--type`` backup, a rollback's
    safety snapshot) never pushes the last snapshots of the others out; one that names no
    component is kept."""
    seen: dict[str, int] = {}
    kept: list[dict[str, Any]] = []
    forgotten: list[dict[str, Any]] = []
    newest_first = sorted(entries, key=lambda e: snapshot_from_restic(e).time, reverse=True)
    for entry in newest_first:
        components = snapshot_from_restic(entry).components
        wanted = not components or any(seen.get(c, 0) < keep_last for c in components)
        for component in components:
            seen[component] = seen.get(component, 0) + 1
        (kept if wanted else forgotten).append(entry)
    return kept, forgotten


async def forget_unretained(
    restic: Restic, tag: str, keep_last: int
) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """`retained` applied to one repository: over its own list of snapshots tagged ``tag``,
    the ones it does not keep are forgotten there (their data stays until `prune`); the
    snapshots kept, and the ids forgotten. The list read is the repository's own, so what
    another repository holds or lacks never decides what goes here."""
    kept, forgotten = retained(await restic.snapshots(tag=tag), keep_last)
    removed = tuple(entry["id"] for entry in forgotten)
    if removed:
        await restic.forget(removed)
    return kept, removed


def _same(one: str, other: str) -> bool:
    """One snapshot's ids: restic 0.14 tells a backup's id short, its list the whole one."""
    return one.startswith(other) or other.startswith(one)


def _holds(snapshots: Iterable[str], snapshot_id: str) -> bool:
    return any(_same(i, snapshot_id) for i in snapshots)


class SnapshotIndex:
    """ERS snapshots, oldest first, replaced wholesale by `replace` or edited by each operation."""

    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._marks: list[RollbackMark] = []  # the rollbacks' records (`backup.lineage`)
        # The changes made here, numbered, for a list read before them (`replace`): a
        # snapshot `add`ed, or ids forgotten. A read takes seconds; this holds far more.
        self._changes: deque[tuple[int, Snapshot | None, tuple[str, ...]]] = deque(maxlen=1024)
        self._changed = 0

    def reading(self) -> int:
        """Where a list read starts, for `replace` (``since``)."""
        return self._changed

    def replace(
        self,
        entries: Iterable[dict[str, Any]],
        marks: Iterable[RollbackMark] | None = None,
        since: int | None = None,
        forgotten: Iterable[str] = (),
    ) -> None:
        """The snapshots, and the rollbacks' records when given (else those known stay). With
        ``since`` (`reading`, taken before the list was read) the changes made here while it
        was read are made to it again: a backup made then stays, and a snapshot forgotten
        then stays gone, whichever read ends first. Without it the list is whole (read in the
        exclusive turn, as `forget` does: ``forgotten``, the ids it forgot)."""
        snapshots = {s.id: s for s in map(snapshot_from_restic, entries)}
        for _, added, gone in (c for c in self._changes if since is not None and c[0] > since):
            if added is not None and not _holds(snapshots, added.id):
                snapshots[added.id] = added
            for known in [i for i in snapshots if any(_same(i, g) for g in gone)]:
                del snapshots[known]
        if forgotten := tuple(forgotten):
            self._changed += 1
            self._changes.append((self._changed, None, forgotten))
        self._snapshots = dict(sorted(snapshots.items(), key=lambda item: item[1].time))
        if marks is not None:  # and those known here: one added while the list was read
            self._marks = list(dict.fromkeys([*marks, *self._marks]))

    def add_mark(self, mark: RollbackMark) -> None:
        self._marks.append(mark)

    def marks(self) -> list[RollbackMark]:
        return list(self._marks)

    def add(self, snapshot: Snapshot) -> None:
        self._snapshots[snapshot.id] = snapshot
        self._changed += 1
        self._changes.append((self._changed, snapshot, ()))

    def contains(self, snapshot_id: str) -> bool:
        """Full id or the short id restic prints after a backup."""
        return bool(snapshot_id) and _holds(self._snapshots, snapshot_id)

    def __len__(self) -> int:
        return len(self._snapshots)

    def all(self) -> list[Snapshot]:
        """Newest first, the order a person reads a backup list in."""
        return sorted(self._snapshots.values(), key=lambda s: s.time, reverse=True)

    def get(self, snapshot_id: str) -> Snapshot:
        """Find by full id or unique prefix (the short id restic prints)."""
        validate_snapshot_id(snapshot_id)
        if snapshot_id in self._snapshots:
            return self._snapshots[snapshot_id]
        matches = [s for i, s in self._snapshots.items() if i.startswith(snapshot_id)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise SnapshotNotFound(
                f"no ERS snapshot {snapshot_id}: refresh the list and pick an existing id"
            )
        raise SnapshotNotFound(
            f"{snapshot_id} matches {len(matches)} snapshots: give more characters of the id"
        )

    def newest_before(
        self, moment: datetime, components: Iterable[str] = (), also: Iterable[RollbackMark] = ()
    ) -> Snapshot | None:
        """The newest snapshot taken before ``moment`` that holds every one of ``components``
        as the live state had them: not one holding a state a rollback put aside
        (`backup.lineage`; ``also``: rollbacks whose records are not in the list)."""
        return newest_on_line(self.all(), [*self._marks, *also], moment, components)

    def newest_containing(self, components: Iterable[str]) -> Snapshot | None:
        wanted = set(components)
        for snapshot in self.all():
            if wanted <= set(snapshot.components):
                return snapshot
        return None
