"""Which snapshots hold a state the live state grew from.

A rollback puts the live state of its components aside and brings back an older snapshot's.
A snapshot taken between that older snapshot and the rollback holds the state put aside: the
live state since did not grow from it, and a later rollback "to before" something must not
bring it back. Once its swap has committed, each rollback leaves its record in the repository:
a snapshot of a few bytes tagged ``ers-rollback`` (outside the backups' list and retention),
``restores:<id>`` and ``rolled-back:<component>``, whose time is after the swap. A rollback
that failed, or was cut off before its swap, leaves none; one whose record could not be
written (or was cut off between its swap and its record) is written late, at its swap's
time, from the caller's trail (``unrecorded``, ``record_late``).

Walked back from a moment, for one component: the snapshots after the newest rollback of it
are the live line, then the snapshot that rollback restored, then those before that snapshot
back to the rollback before it, and so on. A rollback's safety snapshot (reason
`pre-rollback`) is on the line only as the snapshot a later rollback restored (an undo); a
restored snapshot the repository no longer lists ends the line: what came before it is not
known to be on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from backup.errors import BackupError
from backup.locks import parse_restic_time
from backup.models import BackupReason, RollbackResult, Snapshot

if TYPE_CHECKING:
    from backup.restic import Restic

log = logging.getLogger("ers.backup")

MARK_TAG = "ers-rollback"
RESTORES_TAG = "restores:"
ROLLED_BACK_TAG = "rolled-back:"
SWAPPED_AT_TAG = "swapped-at:"  # seconds since the epoch, on a record written late
MARK_FILE = "rollback.json"
MARK_TIMEOUT_S = 120.0
STOPPING_RECORD_S = 10.0  # how long a stop waits for the record of a rollback just done
_TELLING: set[asyncio.Task[None]] = set()  # the trail's words of swaps, while written


@dataclass(frozen=True)
class RollbackMark:
    """One rollback's record: when (after its swap), the snapshot it restored (a full id, or
    the short id of one this process listed before restic's list was read), what it rolled
    back."""

    time: datetime
    restored: str
    components: tuple[str, ...]


def mark_from_restic(entry: dict[str, Any]) -> RollbackMark | None:
    tags = tuple(entry.get("tags") or ())
    restored = [t[len(RESTORES_TAG) :] for t in tags if t.startswith(RESTORES_TAG)]
    at = parse_restic_time(entry.get("time", ""))
    # A record written late carries its swap's moment; the snapshot's own time is the write's.
    for moment in (t[len(SWAPPED_AT_TAG) :] for t in tags if t.startswith(SWAPPED_AT_TAG)):
        with contextlib.suppress(ValueError, OverflowError, OSError):
            at = datetime.fromtimestamp(float(moment), UTC)
    if MARK_TAG not in tags or not restored or at is None:
        return None
    rolled = tuple(t[len(ROLLED_BACK_TAG) :] for t in tags if t.startswith(ROLLED_BACK_TAG))
    return RollbackMark(at, restored[0], rolled)


# The caller's word that a rollback's swap has committed (its audit trail's entry), said
# while the repository's record is written: a kill before that record leaves it to tell.
Swapped = Callable[[RollbackResult], Awaitable[None]]


async def record_rollback(
    restic: Restic, result: RollbackResult, swapped: Swapped | None = None
) -> tuple[RollbackMark | None, RollbackResult]:
    """The repository's record of a rollback whose swap has committed, written after it,
    beside ``swapped`` (whose failure is logged). Returns the record, for the list in
    memory, and the result; one restic could not write is logged, and the result's notes say
    what that means (the rollback is done either way): no record then, which the trail's
    word of the swap stands for until it is written late (``unrecorded``)."""
    at = datetime.now(UTC)
    mark = RollbackMark(at, result.snapshot_id, tuple(result.components))
    tags = _tags(mark)
    body = _body(mark, result.safety_snapshot_id, result.reason)
    read, write = os.pipe()
    try:
        os.write(write, body)  # a few hundred bytes: the pipe holds them
        os.close(write)
        write = -1

        async def say() -> None:
            try:
                if swapped is not None:
                    await swapped(result)
            except Exception:
                log.exception("could not say that the rollback's swap has committed")

        # Side by side: a slow trail holds the record back no longer than a stop does.
        # Detached: a Ctrl-C at the terminal is a stop, which waits for the record.
        writing = asyncio.ensure_future(
            restic.backup_stdin(read, MARK_FILE, tags=tags, timeout=MARK_TIMEOUT_S, detached=True)
        )
        telling = asyncio.ensure_future(say())
        _TELLING.add(telling)  # held until it ends, even once the record is given up
        telling.add_done_callback(_TELLING.discard)
        try:
            await asyncio.shield(writing)
            await asyncio.shield(telling)
        except asyncio.CancelledError:
            # Stopped after the swap: the record (a second's work) is written all the same,
            # within a bound, and the rollback is told as done. The stop stays asked for
            # (`stop_asked`): the caller ends there, not at the next component.
            try:
                async with asyncio.timeout(STOPPING_RECORD_S):
                    await asyncio.shield(writing)
            except (Exception, asyncio.CancelledError) as exc:  # the bound, or a second stop
                writing.cancel()  # restic is stopped before its input is closed
                await asyncio.wait({writing})
                why = (
                    f"not done {STOPPING_RECORD_S:g} s after the stop"
                    if isinstance(exc, TimeoutError)
                    else "stopped a second time"
                    if isinstance(exc, asyncio.CancelledError)
                    else str(exc)
                )
                log.warning("the record of the rollback was not written: %s", why)
                return None, _unrecorded(result)
    except (BackupError, OSError) as exc:
        log.warning("the record of the rollback to %s was not written: %s", result.snapshot_id, exc)
        return None, _unrecorded(result)
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)
    return mark, result


def _tags(mark: RollbackMark) -> list[str]:
    restored = f"{RESTORES_TAG}{mark.restored}"
    return [MARK_TAG, restored, *(f"{ROLLED_BACK_TAG}{c}" for c in mark.components)]


def _body(mark: RollbackMark, safety_snapshot_id: str | None, reason: str | None) -> bytes:
    return json.dumps(
        {
            "restored": mark.restored,
            "components": list(mark.components),
            "safetySnapshot": safety_snapshot_id,
            "reason": reason,
        }
    ).encode()


# How far apart a rollback's record and the trail's word of its swap may be: both are
# written once the swap has committed, side by side, the record within its bounds.
RECORD_WINDOW_S = MARK_TIMEOUT_S + STOPPING_RECORD_S + 60.0


def unrecorded(swaps: Iterable[RollbackMark], marks: Iterable[RollbackMark]) -> list[RollbackMark]:
    """Of the swaps an audit trail tells of (each as the record it would have had, at the
    trail's time), those no record in ``marks`` stands for: written by neither a stop nor
    a kill between the swap and the record, nor a repository away at that moment. A record
    stands for one swap at most, the nearest in time: a rollback undone and done again
    within minutes has two."""
    known: dict[str, list[RollbackMark]] = {}
    for mark in sorted(marks, key=lambda m: m.time):  # by the short id restic prints
        same = known.setdefault(mark.restored[:8], [])
        # One rollback's record known twice (this process's, then restic's, a moment
        # later; or written late by two replicas at once) stands for one swap.
        if not any(_twin(mark, other) for other in same[-4:]):
            same.append(mark)
    told = list(swaps)
    pairs = sorted(  # each record that could stand for a swap, nearest first
        (abs((mark.time - swap.time).total_seconds()), n, id(mark))
        for n, swap in enumerate(told)
        for mark in known.get(swap.restored[:8], ())
        if (mark.restored.startswith(swap.restored) or swap.restored.startswith(mark.restored))
        and set(swap.components) <= set(mark.components)
        and abs((mark.time - swap.time).total_seconds()) <= RECORD_WINDOW_S
    )
    matched: set[int] = set()
    taken: set[int] = set()
    for _, n, record in pairs:
        if n not in matched and record not in taken:
            matched.add(n)
            taken.add(record)
    return [swap for n, swap in enumerate(told) if n not in matched]


def _twin(mark: RollbackMark, other: RollbackMark) -> bool:
    return (
        mark.components == other.components
        and (mark.restored.startswith(other.restored) or other.restored.startswith(mark.restored))
        and abs((mark.time - other.time).total_seconds()) <= TWIN_S
    )


TWIN_S = 5.0  # a record's copies: closer than two rollbacks to one snapshot (an undo between)


async def record_late(restic: Restic, swap: RollbackMark, safety_snapshot_id: str | None) -> None:
    """The repository's record of a rollback whose own was not written, carrying its swap's
    moment (``SWAPPED_AT_TAG``: restic's own time is read in local time, to the second): a
    later rollback "to before" then passes over the snapshots it put aside, in every
    process. Raises BackupError or OSError when restic cannot write it."""
    read, write = os.pipe()
    tags = [*_tags(swap), f"{SWAPPED_AT_TAG}{swap.time.timestamp():.6f}"]
    try:
        os.write(write, _body(swap, safety_snapshot_id, "written late: " + LATE_REASON))
        os.close(write)
        write = -1
        await restic.backup_stdin(read, MARK_FILE, tags=tags, timeout=MARK_TIMEOUT_S)
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


LATE_REASON = "its process stopped, or the repository was away, before it was written"


def stop_asked() -> bool:
    """Whether this task was asked to stop while it wrote a rollback's record."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _unrecorded(result: RollbackResult) -> RollbackResult:
    note = (
        "its record in the repository was not written: the next choice of a snapshot "
        "before an incident, on any replica, writes it from the audit trail's "
        "rollback_swapped and passes over the snapshots it put aside"
    )
    return dataclasses.replace(result, notes=(*result.notes, note))


@dataclass(frozen=True)
class LiveLine:
    """One component's line back from a moment: open time spans and the restored snapshots."""

    spans: tuple[tuple[datetime | None, datetime], ...]  # (after, before); None: no bound
    restored: frozenset[str]

    def holds(self, snapshot: Snapshot) -> bool:
        if snapshot.id in self.restored:
            return True
        if snapshot.reason == BackupReason.PRE_ROLLBACK:
            return False  # the state its rollback put aside
        return any(
            (after is None or after < snapshot.time) and snapshot.time < before
            for after, before in self.spans
        )


def _named(newest_first: Sequence[Snapshot], snapshot_id: str) -> Snapshot | None:
    """By full id, or by a short id either side holds."""
    for snapshot in newest_first:
        if snapshot.id.startswith(snapshot_id) or snapshot_id.startswith(snapshot.id):
            return snapshot
    return None


def live_line(
    newest_first: Sequence[Snapshot],
    marks: Iterable[RollbackMark],
    moment: datetime,
    component: str,
) -> LiveLine:
    rollbacks = sorted(
        (m for m in marks if component in m.components), key=lambda m: m.time, reverse=True
    )
    spans: list[tuple[datetime | None, datetime]] = []
    restored: set[str] = set()
    before: datetime | None = moment
    for mark in rollbacks:
        assert before is not None
        if mark.time >= before:
            continue  # undone by a later rollback, or after the moment
        spans.append((mark.time, before))
        brought_back = _named(newest_first, mark.restored)
        if brought_back is None:
            before = None  # forgotten: nothing older is known to be on the line
            break
        restored.add(brought_back.id)
        before = brought_back.time
    if before is not None:
        spans.append((None, before))
    return LiveLine(tuple(spans), frozenset(restored))


def newest_on_line(
    newest_first: Sequence[Snapshot],
    marks: Sequence[RollbackMark],
    moment: datetime,
    components: Iterable[str],
) -> Snapshot | None:
    """The newest snapshot taken before ``moment`` that holds every one of ``components``
    as the live state had them (all it holds, if none are named)."""
    wanted = set(components)
    lines: dict[str, LiveLine] = {}

    def line(component: str) -> LiveLine:
        if component not in lines:
            lines[component] = live_line(newest_first, marks, moment, component)
        return lines[component]

    for snapshot in newest_first:
        if snapshot.time >= moment or not wanted <= set(snapshot.components):
            continue
        if all(line(c).holds(snapshot) for c in wanted or snapshot.components):
            return snapshot
    return None


def passed_over(
    newest_first: Sequence[Snapshot], marks: Sequence[RollbackMark]
) -> dict[str, list[str]]:
    """Per snapshot id, the components a rollback "to before" passes over in it now: those
    whose state there a rollback put aside, or which are older than a restored snapshot the
    repository no longer lists (not known to be the live state's past). Safety snapshots say
    so by their reason, and are left out here."""
    moment = datetime.now(UTC)
    lines: dict[str, LiveLine] = {}
    over: dict[str, list[str]] = {}
    for snapshot in newest_first:
        if snapshot.reason == BackupReason.PRE_ROLLBACK:
            continue
        for component in snapshot.components:
            if component not in lines:
                lines[component] = live_line(newest_first, marks, moment, component)
            if not lines[component].holds(snapshot):
                over.setdefault(snapshot.id, []).append(component)
    return over
