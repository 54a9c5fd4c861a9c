"""Which snapshots hold a state the live state grew from.

A rollback puts the live state of its components aside and brings back an older snapshot's.
A snapshot taken between that older snapshot and the rollback holds the state put aside: the
live state since did not grow from it, and a later rollback "to before" something must not
bring it back. The record of each rollback is its safety snapshot (reason `pre-rollback`,
taken with the writers paused, just before the swap), tagged ``restores:<id>`` with the
snapshot it brought back. A rollback that failed, with its safety snapshot taken and the live
state left as it was, has the tag taken off again (`disown`).

Walked back from a moment, for one component: the snapshots after the newest rollback of it
are the live line, then the snapshot that rollback restored, then those before that snapshot
back to the rollback before it, and so on. A safety snapshot is on the line only as the
snapshot a later rollback restored (an undo); a snapshot restored that the repository no
longer lists ends the line: what came before it is not known to be on it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from backup.errors import BackupError
from backup.models import BackupReason, Snapshot

if TYPE_CHECKING:
    from backup.restic import Restic

log = logging.getLogger("ers.backup")

RESTORES_TAG = "restores:"


def restores_tag(snapshot_id: str) -> str:
    return f"{RESTORES_TAG}{snapshot_id}"


def restored_by(snapshot: Snapshot) -> str | None:
    """The id of the snapshot the rollback whose safety snapshot this is brought back."""
    if snapshot.reason != BackupReason.PRE_ROLLBACK:
        return None
    found = [t[len(RESTORES_TAG) :] for t in snapshot.tags if t.startswith(RESTORES_TAG)]
    return found[0] if found else None


@dataclass(frozen=True)
class LiveLine:
    """One component's line back from a moment: open time spans and the restored snapshots."""

    spans: tuple[tuple[datetime | None, datetime], ...]  # (after, before); None: no bound
    restored: frozenset[str]

    def holds(self, snapshot: Snapshot) -> bool:
        if snapshot.id in self.restored:
            return True
        if snapshot.reason == BackupReason.PRE_ROLLBACK:
            return False  # the state its rollback put aside (or, untagged, one it may have)
        return any(
            (after is None or after < snapshot.time) and snapshot.time < before
            for after, before in self.spans
        )


def live_line(newest_first: Sequence[Snapshot], moment: datetime, component: str) -> LiveLine:
    rollbacks = [
        (s.time, target)
        for s in newest_first
        if component in s.components and (target := restored_by(s)) is not None
    ]
    by_id = {s.id: s for s in newest_first}
    spans: list[tuple[datetime | None, datetime]] = []
    restored: set[str] = set()
    before: datetime | None = moment
    for at, target in rollbacks:
        if before is None:
            break
        if at >= before:
            continue  # put aside by a later rollback, or after the moment
        spans.append((at, before))
        brought_back = by_id.get(target)
        if brought_back is None:
            before = None  # forgotten: nothing older is known to be on the line
            break
        restored.add(brought_back.id)
        before = brought_back.time
    if before is not None:
        spans.append((None, before))
    return LiveLine(tuple(spans), frozenset(restored))


def newest_on_line(
    newest_first: Sequence[Snapshot], moment: datetime, components: Iterable[str]
) -> Snapshot | None:
    """The newest snapshot taken before ``moment`` that holds every one of ``components``
    as the live state had it (all it holds, if none are named)."""
    wanted = set(components)
    lines: dict[str, LiveLine] = {}

    def line(component: str) -> LiveLine:
        if component not in lines:
            lines[component] = live_line(newest_first, moment, component)
        return lines[component]

    for snapshot in newest_first:
        if snapshot.time >= moment or not wanted <= set(snapshot.components):
            continue
        if all(line(c).holds(snapshot) for c in wanted or snapshot.components):
            return snapshot
    return None


async def disown(restic: Restic, safety_ids: Iterable[str], restored_id: str) -> bool:
    """Take the ``restores:`` tag off the safety snapshots of a rollback that failed with the
    live state as it was: they hold a state the live one grew from. Returns whether restic
    rewrote them (the list must then be read again: a snapshot retagged gets a new id).
    Not done (the repository unreachable): logged; the line then ends at the restored
    snapshot, and a later rollback goes back further than it had to, never to a state
    put aside."""
    ids = [i for i in safety_ids if i]
    if not ids:
        return False
    try:
        await restic.untag(ids, restores_tag(restored_id))
    except BackupError as exc:
        log.warning(
            "the safety snapshot(s) %s of a failed rollback still name %s as restored: %s",
            ", ".join(i[:8] for i in ids),
            restored_id[:8],
            exc,
        )
        return False
    return True
