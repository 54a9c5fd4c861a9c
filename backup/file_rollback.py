"""Test rollbacks and rollbacks of component files: the restoring part of `SqliteFiles`.

A test rollback restores into a scratch folder and verifies each file (`PRAGMA
integrity_check` and the checksum the snapshot carries), then counts rows now and then. A
rollback runs these steps, each timed and announced with a RollbackStepStarted event:
pause-writers, and with the writers paused the safety snapshot beside restore-then-verify
(a safety snapshot taken before the pause would miss the writes acknowledged until it; the
restore beside it makes the rollback cost the longer of the two, not their sum), then swap
and reopen. A failure at any step raises RollbackFailed(step=...) with the live files as
they were; a kill of the process from the swap until the reopen has succeeded is undone on
the next start (`backup.swap_journal`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sqlite3
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from backup import swap
from backup.backend import BackupRequest, Reopen, RollbackRequest
from backup.errors import BackupError, RollbackFailed, RollbackRefused, lacking
from backup.events import EventPublisher, RollbackStepStarted
from backup.models import (
    BackupReason,
    BackupResult,
    ComponentPreview,
    FileVerification,
    RollbackPreview,
    RollbackResult,
    Snapshot,
    TableRows,
)
from backup.restic import ProgressCallback, Restic
from backup.row_diff import sqlite_changes
from backup.snapshotter import Snapshotter
from backup.staging import (
    MANIFEST_NAME,
    not_a_database,
    read_manifest,
    staged_name,
    table_row_counts,
    verify_restored,
)
from backup.workspace import Workspace

log = logging.getLogger(__name__)

A = TypeVar("A")
B = TypeVar("B")


@dataclass(eq=False, slots=True)
class FileRollback:
    """Restores component files into scratch, verifies them, and swaps them in."""

    restic: Restic
    components: Mapping[str, Path]
    workspace: Workspace
    snapshotter: Snapshotter
    events: EventPublisher

    async def _restore(
        self,
        snapshot: Snapshot,
        names: Sequence[str],
        target: Path,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        include = [f"/{staged_name(c)}" for c in names] + [f"/{MANIFEST_NAME}"]
        await self.restic.restore(snapshot.id, target, include=include, on_progress=on_progress)

    @staticmethod
    def _check_restored(snapshot: Snapshot, names: Sequence[str], folder: Path) -> None:
        """RollbackRefused when the snapshot held no file of a component (tagged as ERS's by
        hand): restic restores what it has and says nothing of what it lacks."""
        if missing := [
            f"/{staged_name(c)}" for c in names if not (folder / staged_name(c)).exists()
        ]:
            raise lacking(snapshot.short_id, missing)

    @staticmethod
    async def _verify(names: Sequence[str], folder: Path) -> list[FileVerification]:
        manifest = read_manifest(folder)
        checks = [
            asyncio.to_thread(verify_restored, c, folder / staged_name(c), manifest) for c in names
        ]
        return list(await asyncio.gather(*checks))

    async def preview(
        self, snapshot: Snapshot, names: Sequence[str], *, rows: bool = True
    ) -> RollbackPreview:
        with self.workspace.scratch("test-rollback") as scratch:
            await self._restore(snapshot, names, scratch)
            self._check_restored(snapshot, names, scratch)
            files = await self._verify(names, scratch)
            previews = await asyncio.gather(
                *(
                    asyncio.to_thread(self._component_preview, name, scratch, verification)
                    if rows
                    else _verified_only(name, verification)
                    for name, verification in zip(names, files, strict=True)
                )
            )
        return RollbackPreview(snapshot.id, snapshot.time, snapshot.reason, tuple(previews))

    def _component_preview(
        self, name: str, scratch: Path, verification: FileVerification
    ) -> ComponentPreview:
        live, restored = Path(self.components[name]), scratch / staged_name(name)
        try:
            now = table_row_counts(live, live=True)
        except sqlite3.DatabaseError as exc:  # what a rollback is there to replace: no rows
            if not not_a_database(exc):  # locked, unreadable to this user, an I/O error
                raise BackupError(
                    f"cannot read the live {name} file {live} to compare it ({exc}): check that"
                    " no other program holds it locked and that it is a readable file"
                ) from None
            log.warning("the live %s cannot be read (%s): its rows are not counted", live, exc)
            now = {}
        then = table_row_counts(restored, live=False) if verification.ok else {}
        changes = sqlite_changes(live, restored, now, then) if now and then else {}
        return ComponentPreview(name, verification, TableRows.between(now, then, changes))

    async def apply(self, request: RollbackRequest) -> RollbackResult:
        snapshot, names, reopen = request.snapshot, request.names, request.reopen
        started = time.monotonic()
        steps = _Steps(self.events, snapshot.id)
        live = {name: Path(self.components[name]).resolve() for name in names}
        if gone := [f"{name} ({live[name]})" for name in names if not live[name].exists()]:
            # Nothing of it to keep in the safety snapshot, and a rollback that skipped it
            # would say it rolled back every component the snapshot holds.
            raise RollbackRefused(
                f"the live file of {', '.join(gone)} is missing: start ERS once (it creates an"
                " empty store), stop it, then roll back"
            )

        async def safety_snapshot() -> BackupResult:
            async with steps.step("safety-snapshot"):
                # Always a snapshot of its own, as on PostgreSQL: the last snapshot of an
                # unchanged state is known from the list in memory, which may still hold one
                # gone from the repository, and the replaced state would then be in none.
                safety = BackupRequest(
                    names, BackupReason.PRE_ROLLBACK, full=True, skip_unchanged=False, as_found=True
                )
                backup = await self.snapshotter.take(safety)
                if backup.snapshot_id is None:
                    raise BackupError("no snapshot holds the current state")
                return backup

        async def restore_and_verify(target: Path) -> list[Path]:
            async with steps.step("restore"):
                await self._restore(snapshot, names, target, request.on_progress)
            # Refused, not failed: the safety snapshot beside it is stopped, nothing changed.
            self._check_restored(snapshot, names, target)
            _refuse_kept_as_found(snapshot, names, read_manifest(target))
            async with steps.step("verify"):
                # Making the restored files durable does not depend on the checks: both at once.
                durable = asyncio.gather(
                    *(
                        asyncio.to_thread(swap.place_next_to, target / staged_name(n), live[n])
                        for n in names
                    )
                )
                files, ready = await asyncio.gather(self._verify(names, target), durable)
                if bad := [f for f in files if not f.ok]:
                    raise _unusable(snapshot, bad)
            return ready

        with self.workspace.scratch_next_to(live[names[0]]) as scratch:
            async with steps.step("pause-writers"), request.pause_writers():
                # The safety snapshot is taken with the writers paused: a write acknowledged
                # between its copy and the swap would be in neither it nor the rolled-back
                # files. The restore runs beside it, so the rollback costs about the longer of
                # the two, not their sum, and the writers wait about as long as for either.
                ready, safety = await _both(restore_and_verify(scratch), safety_snapshot())
                safety_id = str(safety.snapshot_id)
                async with steps.step("swap"):
                    swapped = await asyncio.to_thread(
                        partial(
                            swap.swap_in,
                            [(r, live[n]) for r, n in zip(ready, names, strict=True)],
                            snapshot_id=snapshot.id,
                            safety_snapshot_id=safety_id,
                        )
                    )
                try:
                    async with steps.step("reopen"):
                        await _call(reopen)
                except RollbackFailed:
                    await asyncio.to_thread(swap.undo, swapped)
                    with contextlib.suppress(Exception):
                        await _call(reopen)
                    raise
                swap.commit_soon(swapped)  # freeing the old files' blocks need not hold writers
        return RollbackResult(
            snapshot_id=snapshot.id,
            components=tuple(names),
            reason=request.reason,
            safety_snapshot_id=safety_id,
            step_seconds=dict(steps.seconds),
            duration_seconds=time.monotonic() - started,
            kept_as_found=safety.as_found,
        )


_CHECKSUM = {True: "checksum matches", False: "checksum differs", None: "no checksum recorded"}


def _unusable(snapshot: Snapshot, bad: Sequence[FileVerification]) -> BackupError:
    """The restored copies that fail their check: the rollback is refused when each is what
    was backed up (its checksum matches, or none was recorded: the file was damaged when the
    snapshot was taken, nothing is wrong with the repository), failed when one differs."""
    said = "; ".join(f"{f.component}: {f.integrity}, {_CHECKSUM[f.checksum_matches]}" for f in bad)
    if any(f.checksum_matches is False for f in bad):
        return BackupError(
            f"restored files failed verification ({said}): the repository may be damaged, run"
            " a repository check"
        )
    way_on = (
        "leave it out with --components (a rollback's safety snapshot keeps a damaged file as"
        " it was)"
        if snapshot.reason == BackupReason.PRE_ROLLBACK
        else "pick an older snapshot (`ers backup test-rollback ID` checks one)"
    )
    return RollbackRefused(
        f"snapshot {snapshot.short_id} holds a copy SQLite cannot read ({said}): it was "
        f"damaged when the snapshot was taken; {way_on}"
    )


def _refuse_kept_as_found(
    snapshot: Snapshot, names: Sequence[str], manifest: Mapping[str, Mapping[str, object]]
) -> None:
    """RollbackRefused for a component the snapshot holds as a rollback found it, damaged:
    it would fail its verify step (SQLite cannot read it) as if the snapshot were."""
    if found := [c for c in names if manifest.get(c, {}).get("asFound")]:
        dumps = " and ".join(f"restic dump {snapshot.short_id} /{staged_name(c)}" for c in found)
        raise RollbackRefused(
            f"snapshot {snapshot.short_id} holds {', '.join(found)} as a rollback found it, "
            f"damaged: no rollback goes back to it; leave it out with --components (its bytes:"
            f" {dumps})"
        )


class _Steps:
    """Times each step and names the failing one."""

    def __init__(self, events: EventPublisher, snapshot_id: str) -> None:
        self.events = events
        self.snapshot_id = snapshot_id
        self.seconds: dict[str, float] = {}

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> Any:
        self.events.publish(RollbackStepStarted(self.snapshot_id, name))
        started = time.monotonic()
        try:
            yield
        except (RollbackFailed, RollbackRefused):  # named its step, or turned away
            raise
        except Exception as exc:
            raise RollbackFailed(name, exc) from exc
        finally:
            self.seconds[name] = time.monotonic() - started


async def _both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Run both at once; when one fails, stop the other (a restic run is interrupted) first."""
    tasks = (asyncio.ensure_future(first), asyncio.ensure_future(second))
    try:
        a, b = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return a, b


async def _call(callback: Reopen) -> None:
    outcome = callback()
    if inspect.isawaitable(outcome):
        await outcome


async def _verified_only(name: str, verification: FileVerification) -> ComponentPreview:
    return ComponentPreview(name, verification, TableRows.between({}, {}, {}))
