"""Health checks of the backups: the repository answering, each component's last backup
against its schedule, and the last restore drill."""

from __future__ import annotations

import time
from collections.abc import Callable

from backup import BackupError, RepositoryMissing, RepositoryReplaced, RollbackFailed
from backup.errors import PasswordFileUnreadable, WrongPassword, shown_repository
from service.backups.repository_look import REPOSITORY_REFUSALS
from service.backups.service import BackupService
from service.health.checks import CheckResult, Status


class RepositoryUnreachable(ConnectionError):
    """The restic repository cannot be reached (its server, its folder)."""


class RepositoryNotOpened(PermissionError):
    """The repository's password, or its password file, does not open it: one problem of
    access, whichever of the two causes it (an incident typed ``auth``, not ``network``)."""


class RepositoryDamaged(RuntimeError):
    """`restic check` found errors in the repository: its snapshots may not restore."""


def reported_failure(failure: BaseException) -> BaseException:
    """Why the backups cannot be used, as the repository check reports it: a lost or replaced
    repository as itself, a password (or password file) that does not open it as
    RepositoryNotOpened, anything else (an unreachable server) as RepositoryUnreachable.
    A request's 503 reporting it this way joins the check's incident
    instead of opening one of its own, classified otherwise."""
    if isinstance(failure, RepositoryMissing | RepositoryReplaced):
        return failure
    if isinstance(failure, WrongPassword | PasswordFileUnreadable):
        return RepositoryNotOpened(str(failure))
    return RepositoryUnreachable(str(failure))


def reported_operation_failure(failure: BaseException) -> BaseException:
    """A failed backup operation as its request reports it: refused by the repository itself
    (a rollback by its failed step's cause), as the repository check reports that cause, so
    that each refused request counts in the check's incident instead of opening one of its
    own, classified otherwise; any other failure as it is."""
    cause = failure.cause if isinstance(failure, RollbackFailed) else failure
    if isinstance(cause, REPOSITORY_REFUSALS):
        return reported_failure(cause)
    return failure


class RepositoryCheck:
    """Unhealthy when the repository cannot be reached; unhealthy with the named error, which
    the incident pipeline classifies as critical, when the repository the backups went to is
    gone or another one stands in its place."""

    name = "repository"

    def __init__(self, backups: BackupService) -> None:
        self._backups = backups

    async def run(self) -> CheckResult:
        backups = self._backups
        where = {"repository": shown_repository(backups.settings.restic_repository)}
        if backups.manager is None and backups.connection_failures == 0:
            return CheckResult(self.name, Status.DEGRADED, "connecting to the repository", where)
        if backups.manager is None:
            if isinstance(backups.failure, RepositoryMissing | RepositoryReplaced):
                return self._lost(backups.failure, where)
            failure = backups.failure
            error = RepositoryUnreachable(backups.error or "not connected")
            if failure is not None:
                error = reported_failure(failure)
            return CheckResult(
                self.name,
                Status.UNHEALTHY,
                f"repository unavailable: {backups.error}",
                where,
                error,
                component="backups",
            )
        try:
            repository_id = await backups.manager.verify_repository(thorough=True)
        except (RepositoryMissing, RepositoryReplaced) as exc:
            return self._lost(exc, where)
        except BackupError as exc:
            # A password that no longer opens it, or no restic to run: the status's cheap look
            # at a local repository (its config file) cannot tell, so it is told here.
            backups.repository_look.seen = (time.monotonic(), str(exc))
            return CheckResult(
                self.name,
                Status.UNHEALTHY,
                f"repository not answering: {exc}",
                where,
                reported_failure(exc),
                component="backups",
            )
        problem = backups.manager.restic.read_only()
        backups.repository_look.seen = (time.monotonic(), problem)
        if problem:
            return CheckResult(
                self.name,
                Status.UNHEALTHY,
                f"backups stopped: {problem}",
                where,
                RepositoryUnreachable(problem),
                component="backups",
            )
        if found := backups.check_problem:
            return CheckResult(
                self.name,
                Status.UNHEALTHY,
                f"the last repository check found problems: {found}",
                where,
                RepositoryDamaged(
                    "restic check found errors in the backup repository: run `ers backup "
                    "check` for them, and see restic's `repair` commands"
                ),
                component="backups",
            )
        return CheckResult(
            self.name,
            Status.HEALTHY,
            "repository reachable, the one the backups went to",
            {"snapshots": len(backups.manager.list()), "repositoryId": repository_id[:8]},
        )

    def _lost(self, error: BackupError, where: dict[str, str]) -> CheckResult:
        return CheckResult(
            self.name,
            Status.UNHEALTHY,
            f"backups stopped: {error}",
            where,
            error,
            component="backups",
        )


class BackupAgeCheck:
    """Degraded when a component's last backup is older than twice its schedule."""

    name = "backups"

    def __init__(self, backups: BackupService, clock: Callable[[], float] = time.time) -> None:
        self._backups, self._clock = backups, clock

    async def run(self) -> CheckResult:
        now = self._clock()
        last = self._backups.last_success()
        ages: dict[str, float | None] = {}
        stale = []
        for component, interval in self._backups.intervals_s.items():
            at = last.get(component)
            ages[component] = None if at is None else round(now - at, 1)
            since = at if at is not None else self._backups.started_at
            if now - since > 2 * interval:
                stale.append(component)
        figures = {"ageSeconds": ages, "intervalSeconds": self._backups.intervals_s}
        if stale:
            names = ", ".join(sorted(stale))
            reason = f"no backup for over twice the schedule: {names}"
            if not self._backups.settings.backup_schedule_enabled:
                # Backups by hand or from cron still count; the schedule that is off does not.
                reason = (
                    f"no backup for over twice its interval: {names}; the schedule is off "
                    "(backup_schedule_enabled=false): take one with `ers backup create`"
                )
            return CheckResult(self.name, Status.DEGRADED, reason, figures)
        return CheckResult(self.name, Status.HEALTHY, "every component within schedule", figures)


class RestoreDrillCheck:
    name = "restore_drill"

    def __init__(self, backups: BackupService, clock: Callable[[], float] = time.time) -> None:
        self._backups, self._clock = backups, clock

    async def run(self) -> CheckResult:
        backups = self._backups
        every = backups.settings.restore_drill_interval_minutes * 60
        figures = {"lastDrillAt": backups.last_drill_at, "passed": backups.last_drill_ok}
        if backups.leader is not None and not backups.leader.is_leader:
            return CheckResult(
                self.name,
                Status.HEALTHY,
                "restore drills run on the replica that holds the fleet jobs lock",
                figures,
            )
        if backups.last_drill_ok is False:
            problem = backups.last_drill_problem
            reason = "the last restore drill failed" + (f": {problem}" if problem else "")
            return CheckResult(self.name, Status.DEGRADED, reason, figures)
        if not backups.settings.backup_schedule_enabled:
            # None is due: a drill degraded health for good, with nothing here to run one.
            words = "no drills are scheduled (backup_schedule_enabled=false): `ers backup "
            words += "--offline drill` runs one"
            return CheckResult(self.name, Status.HEALTHY, words, figures)
        since = backups.last_drill_at or backups.started_at
        if self._clock() - since > 2 * every:
            return CheckResult(
                self.name, Status.DEGRADED, "no restore drill within twice its schedule", figures
            )
        words = "last drill passed" if backups.last_drill_ok else "no drill due yet"
        return CheckResult(self.name, Status.HEALTHY, words, figures)
