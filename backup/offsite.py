"""Copies of the repository's snapshots to a second restic repository, off the host.

`restic copy` runs against the destination and reads the source, each repository opened
with its own password file. restic 0.14 and later take both from the environment
(`RESTIC_REPOSITORY` / `RESTIC_PASSWORD_FILE` for the destination, `RESTIC_FROM_REPOSITORY` /
`RESTIC_FROM_PASSWORD_FILE` for the source; on the command line `-r`, `--from-repo`,
`--password-file`, `--from-password-file`), so no password and no repository address with
credentials in it is ever on a command line. copy skips the snapshots the destination already
holds, so each run moves only what is new. A missing destination is created with the
source's chunker parameters (`init --copy-chunker-params`), which keeps copied data
deduplicated there.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class OffsiteRepository:
    """Where the off-host copy goes: any restic repository string, and its password file."""

    repository: str
    password_file: Path


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
    ) -> None:
        self.source = source
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
        try:
            exists = await self.destination.repository_id() is not None
        except ResticError as exc:
            # restic's own message would name the address, credentials and all.
            raise OffsiteCopyFailed(
                f"the off-host repository '{shown(self.destination.repository)}' cannot be "
                f"opened ({exc.label}): check its address and that "
                f"'{self.destination.password_file}' holds its password",
                exc.label,
            ) from None
        if not exists:
            await self._run(["init", "--copy-chunker-params"], timeout=120)
        stdout = await self._run(["copy"], timeout=self.timeout)
        return CopyResult(
            copied=len(_SAVED.findall(stdout)),
            skipped=len(_SKIPPED.findall(stdout)),
            duration_s=time.monotonic() - started,
        )
