"""Restore drills, test rollbacks (dry runs) and rollbacks, on behalf of a BackupManager.

A rollback runs these steps, each timed and announced with a RollbackStepStarted event:
safety-snapshot beside restore-then-verify (they do not depend on each other), then
pause-writers, swap, reopen once both have succeeded. A failure at any step raises
RollbackFailed(step=...) with the live files as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backup import swap
from backup.errors import BackupError, RollbackFailed, RollbackRefused, SnapshotNotFound
from backup.events import RollbackFinished, RollbackStepStarted
from backup.models import (
    BackupReason,
    ComponentPreview,
    DrillResult,
    FileVerification,
    RollbackPreview,
    RollbackResult,
    Snapshot,
    TableRows,
)
from backup.restic import ProgressCallback
from backup.staging import (
    MANIFEST_NAME,
    read_manifest,
    staged_name,
    table_row_counts,
    verify_restored,
)

if TYPE_CHECKING:
    from backup.manager import BackupManager

PauseWriters = Callable[[], AbstractAsyncContextManager[Any]]
Reopen = Callable[[], Awaitable[None] | None]


def _includes(components: Sequence[str]) -> list[str]:
    return [f"/{staged_name(c)}" for c in components] + [f"/{MANIFEST_NAME}"]


async def _restore_and_verify(
    manager: BackupManager,
    snapshot: Snapshot,
    components: Sequence[str],
    target: Path,
    on_progress: ProgressCallback | None = None,
) -> list[FileVerification]:
    await manager.restic.restore(
        snapshot.id, target, include=_includes(components), on_progress=on_progress
    )
    return await _verify(components, target)


async def _verify(components: Sequence[str], folder: Path) -> list[FileVerification]:
    manifest = read_manifest(folder)
    checks = [
        asyncio.to_thread(verify_restored, c, folder / staged_name(c), manifest) for c in components
    ]
    return list(await asyncio.gather(*checks))


async def drill(manager: BackupManager, on_progress: ProgressCallback | None) -> DrillResult:
    components = list(manager.config.components)
    snapshot = manager.index.newest_containing(components)
    if snapshot is None:
        raise SnapshotNotFound("there is no full snapshot to verify yet: run a full backup first")
    started = time.monotonic()
    with manager.workspace.scratch("drill") as scratch:
        files = await _restore_and_verify(manager, snapshot, components, scratch, on_progress)
    return DrillResult(
        snapshot_id=snapshot.id,
        verified_at=datetime.now(UTC),
        duration_seconds=time.monotonic() - started,
        files=tuple(files),
    )


def _rollback_components(
    manager: BackupManager, snapshot: Snapshot, components: Sequence[str] | None
) -> list[str]:
    protected = manager.config.never_roll_back
    if components is None:
        names = [c for c in snapshot.components if c not in protected]
    else:
        names = list(dict.fromkeys(components))
    refused = [c for c in names if c in protected]
    if refused:
        raise RollbackRefused(
            f"{', '.join(refused)} is never rolled back: it holds the record of what happened"
        )
    missing = [c for c in names if c not in snapshot.components]
    if missing:
        raise RollbackRefused(
            f"snapshot {snapshot.short_id} does not contain {', '.join(missing)}: pick a "
            f"snapshot that does (it has {', '.join(snapshot.components) or 'nothing'})"
        )
    unknown = [c for c in names if c not in manager.config.components]
    if unknown or not names:
        raise RollbackRefused(
            f"nothing to roll back for {', '.join(unknown) or 'that request'}: name components "
            f"from {', '.join(manager.config.components)}"
        )
    return names


async def preview(
    manager: BackupManager, snapshot_id: str, components: Sequence[str] | None
) -> RollbackPreview:
    """Restore into scratch, verify, and count rows now and in the snapshot; nothing live moves."""
    snapshot = await manager.find(snapshot_id)
    names = _rollback_components(manager, snapshot, components)
    with manager.workspace.scratch("test-rollback") as scratch:
        files = await _restore_and_verify(manager, snapshot, names, scratch)
        previews = await asyncio.gather(
            *(
                asyncio.to_thread(_component_preview, manager, name, scratch, verification)
                for name, verification in zip(names, files, strict=True)
            )
        )
    return RollbackPreview(snapshot.id, snapshot.time, snapshot.reason, tuple(previews))


def _component_preview(
    manager: BackupManager, name: str, scratch: Path, verification: FileVerification
) -> ComponentPreview:
    now = table_row_counts(Path(manager.config.components[name]), live=True)
    then = table_row_counts(scratch / staged_name(name), live=False) if verification.ok else {}
    tables = tuple(TableRows(t, now.get(t), then.get(t)) for t in sorted(set(now) | set(then)))
    return ComponentPreview(name, verification, tables)


class _Steps:
    """Times each step and names the failing one."""

    def __init__(self, manager: BackupManager, snapshot_id: str) -> None:
        self.manager = manager
        self.snapshot_id = snapshot_id
        self.seconds: dict[str, float] = {}

    @contextlib.asynccontextmanager
    async def step(self, name: str) -> Any:
        self.manager.events.publish(RollbackStepStarted(self.snapshot_id, name))
        started = time.monotonic()
        try:
            yield
        except RollbackFailed:
            raise
        except Exception as exc:
            raise RollbackFailed(name, exc) from exc
        finally:
            self.seconds[name] = time.monotonic() - started


async def apply(
    manager: BackupManager,
    snapshot_id: str,
    components: Sequence[str] | None,
    reason: str,
    pause_writers: PauseWriters,
    reopen: Reopen,
    on_progress: ProgressCallback | None = None,
) -> RollbackResult:
    snapshot = await manager.find(snapshot_id)
    names = _rollback_components(manager, snapshot, components)
    started = time.monotonic()
    steps = _Steps(manager, snapshot.id)
    try:
        result = await _apply_steps(
            manager, snapshot, names, reason, pause_writers, reopen, steps, on_progress
        )
    except RollbackFailed as failure:
        label = failure.cause.label if isinstance(failure.cause, BackupError) else "error"
        manager.events.publish(
            RollbackFinished(
                snapshot.id,
                tuple(names),
                time.monotonic() - started,
                failed_step=failure.step,
                error_label=label,
            )
        )
        raise
    manager.events.publish(
        RollbackFinished(snapshot.id, tuple(names), result.duration_seconds, result=result)
    )
    return result


async def _apply_steps(
    manager: BackupManager,
    snapshot: Snapshot,
    names: list[str],
    reason: str,
    pause_writers: PauseWriters,
    reopen: Reopen,
    steps: _Steps,
    on_progress: ProgressCallback | None,
) -> RollbackResult:
    started = time.monotonic()
    live = {name: Path(manager.config.components[name]).resolve() for name in names}

    async def safety_snapshot() -> str:
        async with steps.step("safety-snapshot"):
            # Not started early: beside the restore's restic that makes three busy workers on
            # two cores; copying first staggers the two restic starts (1.05 s against 1.13 s).
            backup = await manager.snapshotter.take(
                names, BackupReason.PRE_ROLLBACK, all_or_nothing=True, start_early=False
            )
            safety_id = backup.snapshot_id or backup.reused_snapshot_id
            if safety_id is None:
                raise BackupError("no snapshot holds the current state")
            return safety_id

    async def restore_and_verify(target: Path) -> list[Path]:
        async with steps.step("restore"):
            await manager.restic.restore(
                snapshot.id, target, include=_includes(names), on_progress=on_progress
            )
        async with steps.step("verify"):
            # Making the restored files durable does not depend on the checks: do both at once.
            durable = asyncio.gather(
                *(
                    asyncio.to_thread(swap.place_next_to, target / staged_name(n), live[n])
                    for n in names
                )
            )
            files, ready = await asyncio.gather(_verify(names, target), durable)
            bad = [f for f in files if not f.ok]
            if bad:
                raise BackupError(
                    "restored files failed verification ("
                    + "; ".join(
                        f"{f.component}: {f.integrity}, checksum {f.checksum_matches}" for f in bad
                    )
                    + "): the snapshot may be damaged, run a repository check"
                )
        return ready

    with manager.workspace.scratch_next_to(live[names[0]]) as scratch:
        # Nothing live changes before both have finished: the swap waits for the safety
        # snapshot and for the verified restore alike.
        safety_id, ready = await _side_by_side(safety_snapshot(), restore_and_verify(scratch))

        async with steps.step("pause-writers"), pause_writers():
            async with steps.step("swap"):
                swapped = await asyncio.to_thread(
                    swap.swap_in, [(r, live[n]) for r, n in zip(ready, names, strict=True)]
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
        reason=reason,
        safety_snapshot_id=safety_id,
        step_seconds=dict(steps.seconds),
        duration_seconds=time.monotonic() - started,
        finished_at=datetime.now(UTC),
    )


async def _side_by_side(
    safety: Awaitable[str], restored: Awaitable[list[Path]]
) -> tuple[str, list[Path]]:
    """Both run to their end, neither cut short by the other; the first failure is raised."""
    tasks = (asyncio.ensure_future(safety), asyncio.ensure_future(restored))
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)  # restic is stopped before the scratch folder goes
        raise
    for failure in [task.exception() for task in tasks]:
        if failure is not None:
            raise failure
    return tasks[0].result(), tasks[1].result()


async def _call(callback: Reopen) -> None:
    outcome = callback()
    if inspect.isawaitable(outcome):
        await outcome
