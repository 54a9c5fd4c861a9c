"""Starting `restic backup` while the consistent copies are still being made.

restic spends most of a small backup getting ready: it derives the repository key (scrypt,
about half a second by design) and takes its lock (a further 0.2 s wait). Only then does it
read its exclude files, and it must read them before it looks at a single file to back up.
An exclude file that does not exist yet is therefore a gate: it is created (empty) only once
the staged folder is final. restic either finds it and backs up the final folder, or arrives
too early, fails on the missing file before reading anything, and the caller runs it again.

Whatever happens to us, restic cannot see a half-staged folder: if this process dies before
the gate is created, restic fails on the missing file, removes its lock and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from backup.errors import ResticError
from backup.process import ProgressCallback

if TYPE_CHECKING:
    from backup.restic import Restic

GATE_NAME = "restic-start-gate"

T = TypeVar("T")


class StartGate:
    """The path restic gets as its exclude file; it exists only after `open`."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / GATE_NAME

    def restic_args(self) -> list[str]:
        return ["--exclude-file", str(self.path)]

    def open(self) -> None:
        """The staged folder is final: let restic read it."""
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    def missed_by(self, error: BaseException) -> bool:
        """Whether `error` is restic failing because it reached the gate before it opened."""
        return isinstance(error, ResticError) and str(self.path) in str(error)


@contextlib.contextmanager
def start_gate(parent: Path) -> Iterator[StartGate]:
    """A StartGate in a fresh folder under `parent`, removed afterwards."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="gate-", dir=parent))
    try:
        yield StartGate(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class EarlyRun(Generic[T]):
    """A command started ahead of its input, waiting at `gate` until `finish` or `abandon`."""

    def __init__(self, gate: StartGate, start: Callable[[StartGate], Awaitable[T]]) -> None:
        self.gate = gate
        self.task: asyncio.Task[T] = asyncio.ensure_future(start(gate))

    async def finish(self) -> T | None:
        """Open the gate and wait for the command's answer.

        None when the command never read past the gate (it came too early, or had already
        failed before the gate opened): running it again is safe, and any real failure
        shows again there.
        """
        in_time = not self.task.done()
        if in_time:
            self.gate.open()
        try:
            return await self.task
        except ResticError as error:
            if not in_time or self.gate.missed_by(error):
                return None
            raise

    async def abandon(self) -> None:
        """Stop the command (the gate stays shut) and wait for it; its outcome is dropped."""
        if not self.task.done():
            self.task.cancel()  # run_program interrupts restic, which removes its lock
        await asyncio.wait({self.task})
        if not self.task.cancelled():
            self.task.exception()  # retrieved on purpose: a stopped run's error means nothing


@dataclass(frozen=True)
class EarlyBackup:
    components: tuple[str, ...]  # what restic was started to tag, in request order
    run: EarlyRun[dict[str, Any]]


def start_backup_early(
    restic: Restic,
    staging_dir: Path,
    components: Sequence[str],
    tags: Sequence[str],
    gate: StartGate,
    *,
    timeout: float | None,
    on_progress: ProgressCallback | None,
) -> EarlyBackup:
    """`restic backup` of `staging_dir`, started now, reading it only once `gate` opens."""
    run = EarlyRun(
        gate,
        lambda g: restic.backup(
            ["."], cwd=staging_dir, tags=tags, timeout=timeout, on_progress=on_progress, gate=g
        ),
    )
    return EarlyBackup(tuple(components), run)
