"""The restic binary, called without a shell, with a timeout, and failures as named exceptions.

The repository and the password file travel in the environment (`RESTIC_REPOSITORY`,
`RESTIC_PASSWORD_FILE`); the password itself is never on a command line or in a message.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backup.errors import (
    PasswordFileUnreadable,
    RepositoryLocked,
    RepositoryNotAFolder,
    RepositoryNotFound,
    RepositoryNotReached,
    RepositoryReadOnly,
    ResticCommandFailed,
    ResticError,
    SnapshotNotFound,
    classify_failure,
    password_file_missing,
    stderr_tail,
)
from backup.inputs import validate_snapshot_id
from backup.locks import remove_stale_locks
from backup.process import CommandOutput, ProgressCallback, inherited_environment, run_program

if TYPE_CHECKING:
    from backup.gate import StartGate

DEFAULT_TIMEOUT_SECONDS = 600.0
_VERSION = re.compile(r"restic (\d+)\.(\d+)\.(\d+)")


class Restic:
    """One restic repository reached through the restic binary."""

    def __init__(
        self,
        repository: str,
        password_file: Path,
        *,
        binary: str = "restic",
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        cache_dir: Path | None = None,
    ) -> None:
        self.repository = repository
        self.password_file = Path(password_file).resolve()
        self.binary = binary
        self.timeout = timeout
        self._env = self._environment(cache_dir)
        self._version: tuple[int, int, int] | None = None

    def _environment(self, cache_dir: Path | None) -> dict[str, str]:
        # Inherited RESTIC_* variables (a stray RESTIC_PASSWORD) must not override ours.
        env = inherited_environment("RESTIC_")
        env["RESTIC_REPOSITORY"] = self.repository
        env["RESTIC_PASSWORD_FILE"] = str(self.password_file)
        if cache_dir is not None:
            env["RESTIC_CACHE_DIR"] = str(Path(cache_dir).resolve())
        return env

    async def version(self) -> tuple[int, int, int]:
        """restic's version, asked once per wrapper."""
        if self._version is None:
            output = await run_program(self.binary, ["version"], env=self._env, timeout=30)
            match = _VERSION.search(output.stdout)
            if output.exit_code != 0 or not match:
                raise ResticCommandFailed(
                    f"'{self.binary} version' gave no version: {stderr_tail(output.stderr)}"
                )
            self._version = (int(match[1]), int(match[2]), int(match[3]))
        return self._version

    def read_only(self) -> str | None:
        """Why restic could not write this repository, when it is on a local disk (restic
        writes a lock file for nearly every command), or None; a remote one is not looked
        at. A read-only repository still opens, so only this tells that backups would fail."""
        if not self.repository.startswith(("/", "local:")):
            return None
        locks = Path(self.repository.removeprefix("local:")) / "locks"
        if not locks.is_dir() or os.access(locks, os.W_OK):
            return None
        return (
            f"the restic repository '{self.repository}' cannot be written ({locks} is "
            "read-only): make it writable again (remount it read-write, fix its owner or "
            "permissions)"
        )

    def _with_full_id(self, summary: dict[str, Any]) -> dict[str, Any]:
        """restic before 0.16 names the new snapshot by its short id; the list read back from
        the repository names it in full. On a local disk the full id is the name of the
        snapshot's file: the summary then has it too (a remote repository keeps the short)."""
        short = str(summary.get("snapshot_id") or "")
        if not short or len(short) >= 64 or not self.repository.startswith(("/", "local:")):
            return summary
        folder = Path(self.repository.removeprefix("local:")) / "snapshots"
        try:
            found = [p.name for p in folder.glob(f"{short}*") if len(p.name) == 64]
        except OSError:
            return summary
        return {**summary, "snapshot_id": found[0]} if len(found) == 1 else summary

    async def run(
        self,
        args: Sequence[str],
        *,
        timeout: float | None = None,
        cwd: Path | None = None,
        on_progress: ProgressCallback | None = None,
        retry_after_stale_lock: bool = True,
        stdin: int | None = None,
        stdout: int | None = None,
        detached: bool = False,
    ) -> CommandOutput:
        """Run one restic command; a stale lock is removed and the command retried once.

        restic takes its lock before it reads `stdin` or writes `stdout` (file descriptors,
        see `run_program`), so the retry finds them untouched.
        """
        if "--no-lock" not in args and (read_only := self.read_only()):
            if args[0] not in ("dump", "restore"):
                # restic would retry its lock file for about 45 s, then fail with a stack trace.
                raise RepositoryReadOnly(f"{read_only}, then try again")
            # A snapshot's files are read without the lock a read-only repository cannot
            # take (a test rollback, a drill): ERS cannot prune it meanwhile (a prune by
            # another owner could, and the read then fails as on a damaged repository).
            args = [args[0], "--no-lock", *args[1:]]
        try:
            return await self._run_checked(args, timeout, cwd, on_progress, stdin, stdout, detached)
        except RepositoryLocked:
            if not retry_after_stale_lock or not await remove_stale_locks(self):
                raise
            return await self._run_checked(args, timeout, cwd, on_progress, stdin, stdout, detached)

    async def _run_checked(
        self,
        args: Sequence[str],
        timeout: float | None,
        cwd: Path | None,
        on_progress: ProgressCallback | None,
        stdin: int | None = None,
        stdout: int | None = None,
        detached: bool = False,
    ) -> CommandOutput:
        output = await run_program(
            self.binary,
            args,
            env=self._env,
            timeout=self.timeout if timeout is None else timeout,
            cwd=cwd,
            on_progress=on_progress,
            stdin=stdin,
            stdout=stdout,
            detached=detached,
        )
        if output.exit_code != 0:
            failure = classify_failure(
                output.exit_code,
                output.stderr,
                repository=self.repository,
                password_file=str(self.password_file),
            )
            # restic reads the password first; 0.14 calls a file that cannot be read a wrong
            # password, or shows its Go error.
            raise self.password_file_problem() or failure
        return output

    def password_file_problem(self) -> PasswordFileUnreadable | None:
        """Why restic cannot read the password file, or None when it can."""
        try:
            with self.password_file.open("rb"):
                return None
        except FileNotFoundError:
            return password_file_missing(self.password_file)
        except OSError as exc:
            return PasswordFileUnreadable(
                f"the restic password file '{self.password_file}' cannot be read "
                f"({exc.strerror or exc}): make it a file this user may read, or fix the "
                "password file setting if it lives elsewhere"
            )

    # Commands -------------------------------------------------------------------------------

    async def repository_id(self) -> str | None:
        """The id restic gave the repository when it was created; None when there is none."""
        try:
            output = await self.run(["cat", "config", "--no-lock"], timeout=60)
        except RepositoryNotFound:
            return None
        except PasswordFileUnreadable:
            if await self._found_without_password():
                raise
            return None
        try:
            return str(json.loads(output.stdout)["id"])
        except (ValueError, KeyError, TypeError):
            raise ResticCommandFailed(
                f"restic printed no repository id: {stderr_tail(output.stdout)}"
            ) from None

    async def _found_without_password(self) -> bool:
        """Whether there is a repository, asked with a throwaway password (restic reads the
        password before it looks): a missing password file must not hide a missing one."""
        env = {k: v for k, v in self._env.items() if k != "RESTIC_PASSWORD_FILE"}
        env["RESTIC_PASSWORD"] = secrets.token_hex(16)
        args = ["cat", "config", "--no-lock"]
        output = await run_program(self.binary, args, env=env, timeout=60)
        failure = classify_failure(
            output.exit_code, output.stderr, repository=self.repository, password_file=""
        )
        if isinstance(failure, RepositoryNotAFolder | RepositoryNotReached):
            raise failure  # not the missing password's fault
        return output.exit_code == 0 or not isinstance(failure, RepositoryNotFound)

    async def init(self) -> None:
        await self.run(["init"], timeout=120)

    async def backup(
        self,
        targets: Sequence[str],
        *,
        cwd: Path,
        tags: Sequence[str],
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        gate: StartGate | None = None,
    ) -> dict[str, Any]:
        """`restic backup --json`; returns restic's summary message.

        With a `gate`, restic gets ready but reads none of `targets` before the gate opens
        (see `backup.gate`).
        """
        args = ["backup", "--json"]
        for tag in tags:
            args += ["--tag", tag]
        if gate is not None:
            args += gate.restic_args()
        output = await self.run(
            [*args, "--", *targets], cwd=cwd, timeout=timeout, on_progress=on_progress
        )
        return self._with_full_id(_backup_summary(output))

    async def backup_stdin(
        self,
        stdin: int,
        filename: str,
        *,
        tags: Sequence[str],
        timeout: float | None = None,
        detached: bool = False,
    ) -> dict[str, Any]:
        """`restic backup --stdin --json`: what arrives on the file descriptor `stdin`, up to
        its end, becomes the file `/<filename>` of a new snapshot; returns restic's summary.
        ``detached``: see `run_program`."""
        args = ["backup", "--stdin", "--stdin-filename", filename, "--json"]
        for tag in tags:
            args += ["--tag", tag]
        output = await self.run(args, timeout=timeout, stdin=stdin, detached=detached)
        return self._with_full_id(_backup_summary(output))

    async def dump(
        self, snapshot_id: str, path: str, *, stdout: int, timeout: float | None = None
    ) -> None:
        """`restic dump`: write the file `path` of a snapshot to the file descriptor `stdout`."""
        validate_snapshot_id(snapshot_id)
        await self.run(["dump", "--", snapshot_id, path], timeout=timeout, stdout=stdout)

    async def snapshots(self, tag: str | None = None) -> list[dict[str, Any]]:
        args = ["snapshots", "--json", "--no-lock"]
        if tag:
            args += ["--tag", tag]
        output = await self.run(args, timeout=120)
        return json.loads(output.stdout or "[]") or []

    async def ls(self, snapshot_id: str) -> list[dict[str, Any]]:
        """The nodes of a snapshot (`restic ls --json`), without the snapshot header line."""
        validate_snapshot_id(snapshot_id)
        output = await self.run(["ls", "--json", "--no-lock", snapshot_id], timeout=120)
        kinds = [m.get("struct_type", m.get("message_type")) for m in output.messages]
        nodes = [m for m, kind in zip(output.messages, kinds, strict=True) if kind == "node"]
        if "snapshot" not in kinds:
            raise SnapshotNotFound(
                f"snapshot {snapshot_id} is not in the repository: refresh the list"
            )
        return nodes

    async def restore(
        self,
        snapshot_id: str,
        target: Path,
        *,
        include: Sequence[str] = (),
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        validate_snapshot_id(snapshot_id)
        args = ["restore", "--json", "--target", str(target)]
        for pattern in include:
            args += ["--include", pattern]
        await self.run([*args, snapshot_id], timeout=timeout, on_progress=on_progress)

    async def forget(self, snapshot_ids: Sequence[str]) -> None:
        """`restic forget` of these snapshots (their data stays until `prune`)."""
        for snapshot_id in snapshot_ids:
            validate_snapshot_id(snapshot_id)
        await self.run(["forget", "--", *snapshot_ids])

    async def prune(self, timeout: float | None = None) -> CommandOutput:
        return await self.run(["prune"], timeout=timeout)

    async def check(self, *, read_data: bool = False, timeout: float | None = None) -> str:
        args = ["check", "--read-data"] if read_data else ["check"]
        output = await self.run(args, timeout=timeout)
        return output.stdout

    async def unlock(self, *, remove_all: bool = False) -> None:
        """Remove stale locks (restic's own rule); `remove_all` also removes live ones."""
        args = ["unlock", "--remove-all"] if remove_all else ["unlock"]
        await self.run(args, timeout=60, retry_after_stale_lock=False)

    async def list_lock_ids(self) -> list[str]:
        output = await self.run(["list", "locks", "--no-lock"], retry_after_stale_lock=False)
        return [line.strip() for line in output.stdout.splitlines() if line.strip()]

    async def read_lock(self, lock_id: str) -> dict[str, Any] | None:
        try:
            output = await self.run(
                ["cat", "lock", lock_id, "--no-lock"], retry_after_stale_lock=False
            )
        except ResticError:
            return None  # released between listing and reading
        return json.loads(output.stdout)


def _backup_summary(output: CommandOutput) -> dict[str, Any]:
    summaries = [m for m in output.messages if m.get("message_type") == "summary"]
    if not summaries:
        raise ResticCommandFailed(f"restic backup printed no summary: {stderr_tail(output.stderr)}")
    return summaries[-1]
