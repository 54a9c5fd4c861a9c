"""Copies of the repository's snapshots to a second restic repository, off the host.

`restic copy` runs against the destination and reads the source, each repository opened
with its own password file. restic 0.14 and later take both from the environment
(`RESTIC_REPOSITORY` / `RESTIC_PASSWORD_FILE` for the destination, `RESTIC_FROM_REPOSITORY` /
`RESTIC_FROM_PASSWORD_FILE` for the source; on the command line `-r`, `--from-repo`,
`--password-file`, `--from-password-file`), so no password and no repository address with
credentials in it is ever on a command line. copy skips the snapshots the destination already
holds, so each run moves only what is new. A missing destination is created with the
source's chunker parameters (`init --copy-chunker-params`), which keeps copied data
deduplicated there; only the first time: its id is then recorded (`record_file`, beside the
location's digest, never the location), and a destination that is gone later (an unmounted
disk, an emptied bucket) or another one at its place is a failure, not a new empty
repository that passes for the off-host copy.

copy only adds, so the destination has a retention of its own (`forget`, `prune`): the
policy of the local repository (`backup.index.retained`) over the destination's own list of
snapshots, never over the source's, so a source that was emptied or replaced never takes
the last copies off the host with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from backup.errors import (
    ResticCommandFailed,
    ResticError,
    classify_failure,
    stderr_tail,
)
from backup.errors import shown_repository as shown
from backup.index import forget_unretained
from backup.process import inherited_environment, run_program
from backup.restic import DEFAULT_TIMEOUT_SECONDS, Restic

# The first copy moves the whole repository over what may be a slow link; a copy cut short
# is tried again on the next run, so the bound is loose.
COPY_TIMEOUT_SECONDS = 6 * 3600.0
# The release that renamed copy's --repo2 to --from-repo and made -r the destination.
MIN_RESTIC = (0, 14, 0)
_SAVED = re.compile(r"^snapshot [0-9a-f]+ saved$", re.MULTILINE)
_SKIPPED = re.compile(r"^skipping source snapshot ", re.MULTILINE)


class OffsiteCopyFailed(ResticError):
    """restic copy to the off-host repository failed; `label` is the underlying reason."""

    def __init__(self, message: str, label: str) -> None:
        super().__init__(message)
        self.label = label


class OffsiteRetentionFailed(ResticError):
    """restic forget or prune on the off-host repository failed, after a copy that
    succeeded; `label` is the underlying reason."""

    def __init__(self, message: str, label: str) -> None:
        super().__init__(message)
        self.label = label


@dataclass(frozen=True)
class OffsiteRepository:
    """Where the off-host copy goes: any restic repository string, and its password file."""

    repository: str
    password_file: Path


def _location_digest(repository: str) -> str:
    """Of the address without its credentials: a digest of a password is no place for one."""
    return hashlib.sha256(shown(repository).encode()).hexdigest()


def _recorded_id(record_file: Path | None, repository: str) -> str | None:
    """The id recorded for this location; None for none, or for another location's (the
    setting changed: the new destination is created as the first one was)."""
    try:
        data = json.loads(record_file.read_text()) if record_file else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OffsiteCopyFailed(
            f"the off-host repository's record {record_file} cannot be read ({exc}): restore "
            "it, or delete it to take the repository there now as the off-host one",
            "repository_replaced",
        ) from None
    if not isinstance(data, dict) or data.get("location") != _location_digest(repository):
        return None
    return str(data.get("id"))


def _record(record_file: Path, repository: str, repository_id: str) -> None:
    staged = record_file.with_name(f".{record_file.name}.new")
    staged.write_text(json.dumps({"id": repository_id, "location": _location_digest(repository)}))
    os.replace(staged, record_file)


@dataclass(frozen=True)
class CopyResult:
    copied: int
    skipped: int
    duration_s: float


class OffsiteCopier:
    def __init__(
        self,
        source: Restic,
        destination: OffsiteRepository,
        *,
        timeout: float = COPY_TIMEOUT_SECONDS,
        cache_dir: Path | None = None,
        record_file: Path | None = None,
    ) -> None:
        """``record_file``: where the destination's id is remembered once it is made or
        first reached; None remembers nothing (every missing destination is created)."""
        self.source = source
        self.record_file = record_file
        self.destination = Restic(
            destination.repository,
            destination.password_file,
            binary=source.binary,
            timeout=DEFAULT_TIMEOUT_SECONDS,
            cache_dir=cache_dir,
        )
        self.timeout = timeout
        self.cache_dir = cache_dir

    def _environment(self) -> dict[str, str]:
        env = inherited_environment("RESTIC_")
        env["RESTIC_REPOSITORY"] = self.destination.repository
        env["RESTIC_PASSWORD_FILE"] = str(self.destination.password_file)
        env["RESTIC_FROM_REPOSITORY"] = self.source.repository
        env["RESTIC_FROM_PASSWORD_FILE"] = str(self.source.password_file)
        if self.cache_dir is not None:
            env["RESTIC_CACHE_DIR"] = str(self.cache_dir.resolve())
        return env

    def _describe(self) -> str:
        return f"from '{shown(self.source.repository)}' to '{shown(self.destination.repository)}'"

    async def _run(self, args: list[str], timeout: float) -> str:
        output = await run_program(
            self.source.binary, args, env=self._environment(), timeout=timeout
        )
        if output.exit_code != 0:
            cause = classify_failure(
                output.exit_code,
                output.stderr,
                repository=shown(self.destination.repository),
                password_file=str(self.destination.password_file),
            )
            raise OffsiteCopyFailed(
                f"restic {args[0]} {self._describe()} failed: {stderr_tail(output.stderr)}; "
                "check that both repositories are reachable and that each password file "
                "opens its own repository",
                cause.label,
            )
        return output.stdout

    async def copy(self) -> CopyResult:
        """Copy every snapshot the destination lacks; create the destination if missing."""
        version = await self.source.version()
        if version < MIN_RESTIC:
            raise ResticCommandFailed(
                f"restic {'.'.join(map(str, version))} cannot copy with --from-repo: install "
                "restic 0.14 or later for the off-host copy"
            )
        started = time.monotonic()
        recorded = _recorded_id(self.record_file, self.destination.repository)
        found = await self._destination_id(recorded)
        if found is None:
            await self._run(["init", "--copy-chunker-params"], timeout=120)
            found = await self.destination.repository_id()
        if self.record_file is not None and recorded is None and found is not None:
            _record(self.record_file, self.destination.repository, found)
        stdout = await self._run(["copy"], timeout=self.timeout)
        return CopyResult(
            copied=len(_SAVED.findall(stdout)),
            skipped=len(_SKIPPED.findall(stdout)),
            duration_s=time.monotonic() - started,
        )

    async def forget(self, keep_last: int, tag: str) -> tuple[str, ...]:
        """Forget the destination's snapshots tagged ``tag`` that retention does not keep
        over its own list: the newest ``keep_last`` of each component there stay, whatever
        the source holds now; the ids forgotten (their data is freed by `prune`)."""
        await self._retention_target("forget")
        try:
            _, removed = await forget_unretained(self.destination, tag, keep_last)
        except ResticError as exc:
            raise self._retention_failed("forget", exc) from None
        return removed

    async def prune(self) -> None:
        """Free the data of the snapshots forgotten on the destination."""
        await self._retention_target("prune")
        try:
            await self.destination.prune(timeout=self.timeout)
        except ResticError as exc:
            raise self._retention_failed("prune", exc) from None

    async def _retention_target(self, command: str) -> None:
        """Only the repository the copies went to is forgotten from or pruned."""
        recorded = _recorded_id(self.record_file, self.destination.repository)
        try:
            if self.record_file is not None and recorded is None:
                raise OffsiteCopyFailed(
                    f"no copy to '{shown(self.destination.repository)}' is recorded in "
                    f"{self.record_file} yet",
                    "repository_not_found",
                )
            if await self._destination_id(recorded) is None:
                raise OffsiteCopyFailed(
                    f"no repository at '{shown(self.destination.repository)}'",
                    "repository_not_found",
                )
        except OffsiteCopyFailed as exc:
            raise OffsiteRetentionFailed(
                f"restic {command} of the off-host repository was not run: {exc}", exc.label
            ) from None

    def _retention_failed(self, command: str, exc: ResticError) -> OffsiteRetentionFailed:
        return OffsiteRetentionFailed(
            f"restic {command} of the off-host repository '{shown(self.destination.repository)}'"
            f" failed: {shown(str(exc))}",
            exc.label,
        )

    async def _destination_id(self, recorded: str | None) -> str | None:
        """The destination's id (None: there is none), checked against ``recorded``."""
        where = shown(self.destination.repository)
        try:
            found = await self.destination.repository_id()
        except ResticError as exc:
            # restic's own message would name the address, credentials and all.
            raise OffsiteCopyFailed(
                f"the off-host repository '{shown(self.destination.repository)}' cannot be "
                f"opened ({exc.label}): check its address and that "
                f"'{self.destination.password_file}' holds its password",
                exc.label,
            ) from None
        if found is None and recorded is not None:
            raise OffsiteCopyFailed(
                f"the off-host repository {recorded[:8]} that held the copies is gone from "
                f"'{where}': put it back (mount its disk, restore the folder or bucket); to "
                f"start a new, empty one there, delete {self.record_file}",
                "repository_not_found",
            )
        if found is not None and recorded is not None and found != recorded:
            raise OffsiteCopyFailed(
                f"the off-host repository at '{where}' is {found[:8]}, not {recorded[:8]} that "
                f"held the copies: put the original back, or delete {self.record_file} to "
                "copy into the one there now",
                "repository_replaced",
            )
        return found
