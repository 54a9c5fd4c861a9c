"""Taking one snapshot: stage consistent copies, leave out what has not changed, run restic.

The snapshotter remembers, per component, the content hash and the snapshot of its last
backup, so an unchanged component costs a copy and a hash but no restic run. When the live
files look changed, restic is started before the copies are made, so they overlap its own
start; it reads the staged folder only through a gate (`backup.gate`) opened once they are final.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup.backend import BackupRequest
from backup.discard import empty_soon
from backup.errors import BackupError, ResticTimeout
from backup.events import (
    BackupFailed,
    BackupSkipped,
    BackupSucceeded,
    EventPublisher,
)
from backup.gate import EarlyBackup, start_backup_early, start_gate
from backup.index import SnapshotIndex, tags_for
from backup.models import BackupResult, BackupSummary, Snapshot
from backup.restic import Restic
from backup.staging import (
    Signature,
    StagedFile,
    clear_folder,
    live_signature,
    stage_component,
    write_manifest,
)

# After restic reached the gate before the copies were done, copy first for this many backups.
EARLY_PAUSE_AFTER_A_MISS = 10


@dataclass(eq=False)
class Snapshotter:
    restic: Restic
    components: Mapping[str, Path]
    staging_dir: Path
    index: SnapshotIndex
    events: EventPublisher
    # Start gates and copies waiting for deletion; never inside staging (restic reads it).
    scratch_dir: Path
    _hash_at_last_snapshot: dict[str, str] = field(init=False, default_factory=dict)
    # How each live file looked (size, times) when its copy matched its snapshot.
    _signature_at_last_snapshot: dict[str, Signature | None] = field(
        init=False, default_factory=dict
    )
    # component -> newest snapshot holding it
    _snapshot_of: dict[str, str] = field(init=False, default_factory=dict)
    # Backups left to run without an early start.
    _early_starts_paused: int = field(init=False, default=0)

    def _unchanged(self, staged: StagedFile) -> bool:
        holder = self._snapshot_of.get(staged.component)
        same = self._hash_at_last_snapshot.get(staged.component) == staged.sha256
        return same and holder is not None and self.index.contains(holder)

    def _looks_unchanged(self, component: str, signature: Signature | None) -> bool:
        """A guess from the live file's size and times; only the copy's hash is proof."""
        if signature is None or self._signature_at_last_snapshot.get(component) != signature:
            return False
        holder = self._snapshot_of.get(component)
        return holder is not None and self.index.contains(holder)

    async def take(self, request: BackupRequest) -> BackupResult:
        """Stage the request's components, back up what changed (everything when not
        `skip_unchanged`); a `full` request is all or nothing; restic starts beside the
        copies."""
        names, reason = request.names, request.reason
        started_at, started = datetime.now(UTC), time.monotonic()
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        # Taken before copying: a write that lands during the copy makes the next look differ.
        looks = {n: live_signature(Path(self.components[n])) for n in names}
        try:
            with contextlib.ExitStack() as gates:
                early = self._start_early(request, looks, gates)
                try:
                    message, staged, skipped = await self._stage_and_back_up(
                        request, looks, started, early
                    )
                finally:
                    if early is not None:
                        await early.run.abandon()  # stops it unless it already finished
        except BackupError as exc:
            self.events.publish(
                BackupFailed(tuple(names), reason, exc.label, str(exc), time.monotonic() - started)
            )
            raise
        finally:
            # Emptied at once; the 100 MB copy's blocks are freed without holding anyone up.
            empty_soon(self.staging_dir, self.scratch_dir)
        if message is None:
            holders = {self._snapshot_of.get(n) for n in names}
            return self._skipped(names, reason, started_at, started, holders)
        summary = BackupSummary.from_restic(message)
        snapshot_id = str(message["snapshot_id"])
        self._record(snapshot_id, staged, looks, started_at, reason)
        result = BackupResult(
            snapshot_id=snapshot_id,
            reason=reason,
            components=tuple(sorted(f.component for f in staged)),
            skipped=skipped,
            started_at=started_at,
            duration_seconds=time.monotonic() - started,
            summary=summary,
            total_size=sum(f.size for f in staged),
            as_found=tuple(sorted(f.component for f in staged if f.as_found)),
        )
        self.events.publish(BackupSucceeded(result))
        return result

    def _start_early(
        self,
        request: BackupRequest,
        looks: Mapping[str, Signature | None],
        gates: contextlib.ExitStack,
    ) -> EarlyBackup | None:
        """Start restic now, behind a shut gate, for what the live files suggest has changed.

        restic's start (key derivation, lock) then overlaps the copies. The guess only picks the
        tags; the copies' hashes decide, and a wrong guess stops this run before the gate opens.
        """
        if self._early_starts_paused > 0:
            self._early_starts_paused -= 1
            return None
        names = request.names
        seem_unchanged = {
            n for n in names if request.skip_unchanged and self._looks_unchanged(n, looks[n])
        }
        expected = self._to_back_up(names, seem_unchanged, request.full)
        if not expected:
            return None  # most likely a skip: starting restic would be wasted work
        try:
            gate = gates.enter_context(start_gate(self.scratch_dir))
        except OSError:
            return None  # no room for the gate's folder: copy first, as without a gate
        tags = tags_for(expected, request.reason)
        return start_backup_early(
            self.restic, self.staging_dir, expected, tags, gate,
            timeout=request.timeout, on_progress=request.on_progress,
        )  # fmt: skip

    async def _stage_and_back_up(
        self,
        request: BackupRequest,
        looks: Mapping[str, Signature | None],
        started: float,
        early: EarlyBackup | None,
    ) -> tuple[dict[str, Any] | None, list[StagedFile], tuple[str, ...]]:
        """Stage every component, keep what changed, back it up; no message when nothing did."""
        staging, names, timeout = self.staging_dir, request.names, request.timeout
        staged = await self._stage(names, staging, as_found=request.as_found)
        unchanged = {f.component for f in staged if self._unchanged(f)}
        for name in unchanged:
            self._signature_at_last_snapshot[name] = looks[name]
        chosen = self._to_back_up(
            names, unchanged if request.skip_unchanged else set(), request.full
        )
        changed = [f for f in staged if f.component in chosen]
        skipped = tuple(f.component for f in staged if f.component not in chosen)
        if not changed:
            return None, [], skipped
        for unused in (f for f in staged if f.component not in chosen):
            unused.path.unlink()
        write_manifest(staging, changed)
        self._check_time_left(started, timeout)
        if early is not None and early.components == tuple(chosen):
            # The staged folder is final from here on: restic may read it.
            message = await early.run.finish()
            if message is not None:
                return message, changed, skipped
            # restic was ready before the copies were: starting it early only costs here.
            self._early_starts_paused = EARLY_PAUSE_AFTER_A_MISS
        elif early is not None:
            await early.run.abandon()  # started with the wrong tags: it must never read
        tags = tags_for(chosen, request.reason)
        remaining = self._check_time_left(started, timeout)
        message = await self.restic.backup(
            ["."], cwd=staging, tags=tags, timeout=remaining, on_progress=request.on_progress
        )
        return message, changed, skipped

    @staticmethod
    def _check_time_left(started: float, timeout: float | None) -> float | None:
        remaining = None if timeout is None else timeout - (time.monotonic() - started)
        if remaining is not None and remaining <= 0:
            raise ResticTimeout(f"copying the state took longer than {timeout:g} s")
        return remaining

    def _to_back_up(
        self, names: Sequence[str], unchanged: set[str], all_or_nothing: bool
    ) -> list[str]:
        chosen = [n for n in names if n not in unchanged]
        if all_or_nothing and chosen and len(chosen) < len(names):
            return list(names)  # a full snapshot must stand on its own
        holders = {self._snapshot_of.get(n) for n in names}
        if all_or_nothing and not chosen and len(holders) != 1:
            return list(names)  # unchanged, but spread over several snapshots
        return chosen

    async def _stage(
        self, names: Sequence[str], staging: Path, *, as_found: bool = False
    ) -> list[StagedFile]:
        clear_folder(staging)
        copies = [
            asyncio.to_thread(
                stage_component, name, Path(self.components[name]), staging, as_found=as_found
            )
            for name in names
        ]
        # Every copy ends before this returns or raises: one still running when another
        # failed would write its file into the staging folder after it was emptied.
        outcomes = await asyncio.gather(*copies, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return [outcome for outcome in outcomes if isinstance(outcome, StagedFile)]

    def _skipped(
        self,
        names: Sequence[str],
        reason: str,
        started_at: datetime,
        started: float,
        holders: set[str | None],
    ) -> BackupResult:
        result = BackupResult.nothing_changed(
            names, reason, started_at, time.monotonic() - started, holders
        )
        self.events.publish(BackupSkipped(result))
        return result

    def _record(
        self,
        snapshot_id: str,
        staged: Sequence[StagedFile],
        looks: Mapping[str, Signature | None],
        started_at: datetime,
        reason: str,
    ) -> None:
        components = tuple(sorted(f.component for f in staged))
        for f in staged:
            self._hash_at_last_snapshot[f.component] = f.sha256
            self._signature_at_last_snapshot[f.component] = looks[f.component]
            self._snapshot_of[f.component] = snapshot_id
        tags = tuple(tags_for(components, reason))
        self.index.add(
            Snapshot(
                snapshot_id,
                snapshot_id[:8],
                started_at,
                components,
                reason,
                tags,
                socket.gethostname(),
            )
        )
