"""Named failures of the backup library and the mapping from restic's answers to them.

restic 0.14 answers most failures with exit code 1 and a recognisable line on stderr; 0.17 and
later add exit codes 10 (no repository), 11 (locked) and 12 (wrong password). Both are mapped
here, from the exit code first and the text second, so the rest of the library never parses
stderr itself.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass

EXIT_REPOSITORY_MISSING = 10
EXIT_LOCKED = 11
EXIT_WRONG_PASSWORD = 12

STDERR_TAIL_CHARS = 400
# The user and password of a URL-style repository address (`rest:https://ers:pw@host/`):
# restic needs them, a message, a log line or a reply body does not.
_CREDENTIALS = re.compile(r"(?<=//)[^/@\s]+@")
# restic 0.14 ends a server it cannot reach with "Is there a repository at the following
# location?", as it ends a repository that is not there; the network error before it tells
# the two apart; the most telling first, as it names the cause.
_NOT_REACHED = (
    "connection refused",
    "no such host",
    "i/o timeout",
    "network is unreachable",
    "no route to host",
    "connection reset by peer",
    "tls handshake",
    "x509",
    "ssh: connect to host",
    "dial tcp",
)


class BackupError(Exception):
    """Base of every failure this library raises; `label` is a short metrics-friendly reason."""

    label = "error"


class InvalidSnapshotId(BackupError, ValueError):
    label = "invalid_snapshot_id"


class SnapshotNotFound(BackupError, LookupError):
    label = "snapshot_not_found"


class UnknownComponent(BackupError, ValueError):
    label = "unknown_component"


class RollbackRefused(BackupError, ValueError):
    label = "rollback_refused"


def lacking(snapshot_short_id: str, paths: Sequence[str]) -> RollbackRefused:
    """A snapshot tagged as ERS's (by hand) that does not hold a component's file or dump:
    refused by a test rollback and a rollback in the same words, with nothing changed."""
    return RollbackRefused(
        f"snapshot {snapshot_short_id} holds no {', '.join(paths)}: pick another"
    )


class RollbackInProgress(RollbackRefused):
    """Another process (a second replica, an offline command) is rolling the same component
    back; two at once would race on its schema, so the later one is turned away."""

    label = "rollback_in_progress"


class RollbackFailed(BackupError):
    """A rollback stopped at `step`; the live files are as they were before it started."""

    label = "rollback_failed"

    def __init__(self, step: str, cause: BaseException) -> None:
        self.step = step
        self.cause = cause
        super().__init__(
            f"rollback failed at step '{step}': {cause}; the live data was left unchanged"
        )


class StagingFailed(BackupError):
    label = "staging"


class PgToolNotInstalled(BackupError):
    """pg_dump, pg_restore or psql is not installed where the library looks for it."""

    label = "pg_tool_not_installed"


class PgDumpFailed(BackupError):
    """pg_dump could not copy a component's schema out of PostgreSQL."""

    label = "pg_dump_failed"


class PgRestoreFailed(BackupError):
    """A dump could not be restored (into a scratch database or the live one)."""

    label = "pg_restore_failed"


class ResticError(BackupError):
    label = "command_failed"


class ResticNotInstalled(ResticError):
    label = "not_installed"


class RepositoryNotFound(ResticError):
    label = "repository_not_found"


class RepositoryNotAFolder(ResticError):
    """A local repository path that is a file: no repository, and none can be made there."""

    label = "repository_not_found"


class RepositoryNotReached(ResticError):
    """The repository's server did not answer: the repository may well be there, so it is
    neither reported gone nor created anew."""


class RepositoryMissing(RepositoryNotFound):
    """No repository where the backups are meant to go: one that was there is gone, or none
    was ever created for this data directory. Nothing creates one silently."""

    label = "repository_not_found"


class RepositoryReplaced(ResticError):
    """The repository at the configured location is not the one this data directory's backups
    were written to (its id differs)."""

    label = "repository_replaced"


class InvalidBackupReason(BackupError, ValueError):
    label = "invalid_reason"


class WrongPassword(ResticError):
    label = "wrong_password"


class PasswordFileUnreadable(ResticError):
    """The repository's password file is gone or cannot be read: restic 0.14 calls that a
    wrong password."""

    label = "password_file"


class DiskFull(ResticError):
    label = "disk_full"


class RepositoryReadOnly(ResticError):
    label = "read_only"


class ResticTimeout(ResticError):
    label = "timeout"


class ResticCommandFailed(ResticError):
    label = "command_failed"


class Interrupted(BackupError):
    """A program (restic, pg_dump, pg_restore) was stopped by SIGINT or SIGTERM before it
    finished: a terminal's Ctrl-C, or a service manager stopping ERS (systemd signals every
    process of the unit), not a fault of the repository, the database or what it was given."""

    label = "interrupted"


class ResticInterrupted(Interrupted, ResticError):
    label = "interrupted"


def stopping_signal(exit_code: int | None) -> str | None:
    """SIGINT or SIGTERM when a program's exit code says one ended it (minus the signal),
    else None."""
    return {-signal.SIGINT: "SIGINT", -signal.SIGTERM: "SIGTERM"}.get(exit_code or 0)


@dataclass(frozen=True)
class LockHolder:
    """Who holds a repository lock, as far as restic told us."""

    pid: int | None = None
    hostname: str | None = None
    username: str | None = None
    created: str | None = None
    lock_id: str | None = None

    def describe(self) -> str:
        who = f"PID {self.pid or '?'} on {self.hostname or '?'}"
        if self.username:
            who += f" by {self.username}"
        if self.created:
            who += f", since {self.created}"
        return who


class RepositoryLocked(ResticError):
    label = "locked"

    def __init__(self, message: str, holder: LockHolder | None = None) -> None:
        self.holder = holder
        super().__init__(message)


def stderr_tail(stderr: str, limit: int = STDERR_TAIL_CHARS) -> str:
    text = " ".join(stderr.strip().split())
    return text if len(text) <= limit else "…" + text[-limit:]


_LOCK_PATTERN = re.compile(
    r"locked (?:exclusively )?by PID (?P<pid>\d+) on (?P<host>\S+) by (?P<user>[^\s(]+)"
)
_LOCK_CREATED = re.compile(r"lock was created at (?P<created>[^(\n]+?)\s*\(")
_LOCK_ID = re.compile(r"storage ID (?P<id>[0-9a-f]+)")


def parse_lock_holder(stderr: str) -> LockHolder:
    match = _LOCK_PATTERN.search(stderr)
    created = _LOCK_CREATED.search(stderr)
    lock_id = _LOCK_ID.search(stderr)
    return LockHolder(
        pid=int(match["pid"]) if match else None,
        hostname=match["host"] if match else None,
        username=match["user"] if match else None,
        created=created["created"].strip() if created else None,
        lock_id=lock_id["id"] if lock_id else None,
    )


def locked_error(holder: LockHolder) -> RepositoryLocked:
    return RepositoryLocked(
        f"the restic repository is in use by {holder.describe()}: wait for that process to "
        "finish, or stop it, then try again",
        holder,
    )


def shown_repository(repository: str) -> str:
    """A repository address fit for a message: the user and password of a URL left out."""
    return _CREDENTIALS.sub("***@", repository)


def password_file_missing(password_file: object) -> PasswordFileUnreadable:
    return PasswordFileUnreadable(
        f"the restic password file '{password_file}' does not exist: put it back, or fix the "
        "password file setting if it lives elsewhere (a new password opens no existing "
        "repository)"
    )


def classify_failure(
    exit_code: int, stderr: str, *, repository: str, password_file: str
) -> ResticError:
    """Turn a failed restic call into the matching named exception."""
    lowered = stderr.lower()
    repository = shown_repository(repository)
    if (stopped := _stopped_by_signal(exit_code, lowered)) is not None:
        return stopped
    network = next((cause for cause in _NOT_REACHED if cause in lowered), None)
    if exit_code != EXIT_REPOSITORY_MISSING and network is not None:
        return RepositoryNotReached(
            f"the restic repository '{repository}' cannot be reached ({network}): "
            "bring its server back or fix the repository setting; nothing was changed"
        )
    # The path (or a folder above it) a file; a repository's keys folder a file is damage.
    if "unable to open repository" in lowered and re.search(
        r"\bopen [^:]+/keys: not a dir", lowered
    ):
        return RepositoryNotAFolder(
            f"the restic repository '{repository}' is a file, not a repository's folder: point "
            "the repository setting at a folder (ERS makes the repository there)"
        )
    if exit_code == EXIT_REPOSITORY_MISSING or (
        "is there a repository at the following location" in lowered
        or "repository does not exist" in lowered
    ):
        return RepositoryNotFound(
            f"no restic repository at '{repository}': put it back or fix the repository "
            "setting if it lives elsewhere; `ers backup init` starts a new, empty one instead"
        )
    if exit_code == EXIT_WRONG_PASSWORD or "wrong password or no key found" in lowered:
        return WrongPassword(
            f"the password in '{password_file}' does not open the repository '{repository}': "
            "restore the original password file"
        )
    if exit_code == EXIT_LOCKED or "repository is already locked" in lowered:
        return locked_error(parse_lock_holder(stderr))
    if "no space left on device" in lowered or "disk quota exceeded" in lowered:
        return DiskFull(
            "restic ran out of disk space: free space where the repository and the data "
            "directory live (pruning old snapshots frees only the repository's disk)"
        )
    if refused := _REFUSED_WRITE.search(stderr):
        return _write_refused(refused["path"], refused["why"].lower(), repository)
    if "no matching id found" in lowered or "no snapshot found" in lowered:
        return SnapshotNotFound(
            "restic does not know that snapshot: refresh the list and pick an existing id"
        )
    return ResticCommandFailed(f"restic exited with code {exit_code}: {stderr_tail(stderr)}")


def _stopped_by_signal(exit_code: int, lowered: str) -> ResticError | None:
    """restic 0.14 ends with 130 after its own SIGINT handler has run; a signal it does not
    catch (SIGTERM, SIGKILL) ends it, which the exit code tells as minus the signal."""
    handled = exit_code == 130 or "signal interrupt received" in lowered
    if (stopped := "SIGINT" if handled else stopping_signal(exit_code)) is not None:
        return ResticInterrupted(f"restic was stopped by {stopped} before it finished")
    if exit_code >= 0:
        return None
    try:
        name = signal.Signals(-exit_code).name
    except ValueError:
        name = f"signal {-exit_code}"
    return ResticCommandFailed(
        f"restic was killed by {name} before it finished"
        + (" (the kernel's out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else "")
    )


# restic retries a refused write for about 45 s, then ends with a Go stack trace; the first
# line names the file and the reason.
_REFUSED_WRITE = re.compile(
    r"(?:open|chmod|mkdir|rename|remove|create|write) (?P<path>/\S+?): "
    r"(?P<why>read-only file system|permission denied|operation not permitted)",
    re.IGNORECASE,
)


def _write_refused(path: str, why: str, repository: str) -> ResticError:
    root = repository.removeprefix("local:").rstrip("/")
    if root.startswith("/") and (path == root or path.startswith(root + "/")):
        return RepositoryReadOnly(
            f"the restic repository '{repository}' cannot be written ({why}): make it "
            "writable again (remount it read-write, fix its owner or permissions), then try again"
        )
    return ResticCommandFailed(
        f"restic cannot write {path} ({why}): make it writable again, then try again"
    )
