"""Health checks: each returns a status (healthy | degraded | unhealthy), a reason and the
figures behind it. A check whose status is unhealthy may carry the error it stands for, which
the monitor reports as an error span so the incident pipeline classifies it."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import psutil

from service.resilience.system_state import all_but_out
from service.tasks import cancel_and_wait


class Status(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    @property
    def rank(self) -> int:
        return {"healthy": 0, "degraded": 1, "unhealthy": 2}[self.value]


def worst(statuses: list[Status]) -> Status:
    return max(statuses, key=lambda s: s.rank, default=Status.HEALTHY)


class MemoryPressure(MemoryError):
    """The process uses more memory than its critical line allows."""


class EventLoopStalled(RuntimeError):
    """The event loop did not get to run for too long."""


class DiskSpaceLow(OSError):
    """The data directory's disk is nearly full."""


class HealthCheckFailed(RuntimeError):
    """A health check could not tell: it raised or did not finish in time."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    component: str = "system"
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "reason": self.reason,
            "figures": self.figures,
            "checkedAt": self.at,
        }


class HealthCheck(Protocol):
    name: str

    async def run(self) -> CheckResult: ...


# --- memory ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryReading:
    rss_bytes: int
    limit_bytes: int
    # "cgroup": the container's (or unit's) memory limit; "host": no limit was found, so the
    # host's whole memory, and the 80%/90% lines mean 80%/90% of the machine.
    limit_source: str

    @property
    def ratio(self) -> float:
        return self.rss_bytes / self.limit_bytes if self.limit_bytes else 0.0


CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_MEMBERSHIP = Path("/proc/self/cgroup")
# cgroup v1 writes "no limit" as a huge number rather than "max".
V1_UNLIMITED = 1 << 60


def _read_limit(path: Path, unlimited_above: int | None) -> int | None:
    try:
        raw = path.read_text().strip()
    except OSError:
        return None
    if raw == "max" or not raw.isdigit():
        return None
    value = int(raw)
    if unlimited_above is not None and value >= unlimited_above:
        return None
    return value


def cgroup_memory_limit(
    root: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP
) -> int | None:
    """The tightest memory limit over this process's cgroup and its parents, or None.

    Inside a container with its own cgroup namespace (Docker's default on cgroup v2) the
    process's cgroup is the root of ``root``; without one, /proc/self/cgroup names the path
    below ``root``, and a limit may sit on a parent (a systemd slice, say)."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    limits: list[int] = []
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:
            base, name, unlimited = root, "memory.max", None
        elif "memory" in controllers.split(","):
            base, name, unlimited = root / "memory", "memory.limit_in_bytes", V1_UNLIMITED
        else:
            continue
        directory = base / path.strip().lstrip("/")
        for folder in (directory, *directory.parents):
            if folder != base and base not in folder.parents:
                break
            found = _read_limit(folder / name, unlimited)
            if found is not None:
                limits.append(found)
    if not limits:
        # No membership file (not Linux) or paths it names are not visible: the root files.
        for path, unlimited in (
            (root / "memory.max", None),
            (root / "memory" / "memory.limit_in_bytes", V1_UNLIMITED),
        ):
            found = _read_limit(path, unlimited)
            if found is not None:
                limits.append(found)
    return min(limits, default=None)


def read_memory(root: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP) -> MemoryReading:
    """This process's resident memory against its cgroup limit, else the host's memory."""
    rss = psutil.Process().memory_info().rss
    limit = cgroup_memory_limit(root, membership)
    if limit is not None:
        return MemoryReading(rss, limit, "cgroup")
    return MemoryReading(rss, psutil.virtual_memory().total, "host")


# The share of the limit over which memory is degraded, and caches are worth trimming.
MEMORY_WARNING = 0.80


def memory_share() -> tuple[float, float]:
    """This process's memory share of its limit now, and the warning line."""
    return read_memory().ratio, MEMORY_WARNING


class MemoryCheck:
    name = "memory"

    def __init__(
        self,
        reader: Callable[[], MemoryReading] = read_memory,
        warning: float = MEMORY_WARNING,
        critical: float = 0.90,
    ) -> None:
        self.reader, self.warning, self.critical = reader, warning, critical
        self.last: MemoryReading | None = None

    async def run(self) -> CheckResult:
        reading = self.last = self.reader()
        share = reading.ratio
        figures = {
            "rssBytes": reading.rss_bytes,
            "limitBytes": reading.limit_bytes,
            "limitSource": reading.limit_source,
            "usage": round(share, 4),
        }
        percent = f"{share:.0%}"
        if share >= self.critical:
            error = MemoryPressure(f"Memory usage exceeded {self.critical:.0%} ({percent})")
            return CheckResult(
                self.name, Status.UNHEALTHY, f"memory at {percent} of the limit", figures, error
            )
        if share >= self.warning:
            return CheckResult(
                self.name,
                Status.DEGRADED,
                f"memory at {percent}, over the {self.warning:.0%} line",
                figures,
            )
        return CheckResult(self.name, Status.HEALTHY, f"memory at {percent}", figures)


# --- event loop -----------------------------------------------------------------------


class LoopLagMonitor:
    """Samples how late the event loop wakes a sleeping task; keeps the worst recent lag."""

    def __init__(self, interval_s: float = 0.25, window: int = 40) -> None:
        self.interval_s = interval_s
        self._samples: list[float] = []
        self._window = window
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sample(), name="loop-lag")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.observe(max(0.0, loop.time() - expected))

    def observe(self, lag_s: float) -> None:
        self._samples.append(lag_s)
        if len(self._samples) > self._window:
            del self._samples[0]

    @property
    def worst_s(self) -> float:
        return max(self._samples, default=0.0)


class EventLoopCheck:
    name = "event_loop"

    def __init__(self, monitor: LoopLagMonitor, warning_s: float = 0.1, critical_s: float = 1.0):
        self._monitor, self.warning_s, self.critical_s = monitor, warning_s, critical_s

    async def run(self) -> CheckResult:
        lag = self._monitor.worst_s
        figures = {"lagMs": round(lag * 1000, 2)}
        if lag >= self.critical_s:
            error = EventLoopStalled(f"event loop lag {lag:.2f} s")
            return CheckResult(self.name, Status.UNHEALTHY, "event loop stalled", figures, error)
        if lag >= self.warning_s:
            return CheckResult(self.name, Status.DEGRADED, f"event loop lag {lag:.2f} s", figures)
        return CheckResult(self.name, Status.HEALTHY, "event loop responsive", figures)


# --- disk -----------------------------------------------------------------------------


class DiskCheck:
    name = "disk"

    def __init__(
        self,
        path: Path,
        warning_free: float = 0.10,
        critical_free: float = 0.02,
        usage: Callable[[Path], Any] = shutil.disk_usage,
    ) -> None:
        self._path, self.warning_free, self.critical_free = path, warning_free, critical_free
        self._usage = usage

    async def run(self) -> CheckResult:
        try:
            usage = self._usage(self._path)
        except OSError as exc:
            error = DiskSpaceLow(f"cannot read disk usage of {self._path}: {exc.strerror}")
            return CheckResult(self.name, Status.UNHEALTHY, str(error), {}, error)
        free = usage.free / usage.total if usage.total else 0.0
        figures = {"freeBytes": usage.free, "totalBytes": usage.total, "free": round(free, 4)}
        if free <= self.critical_free:
            error = DiskSpaceLow(f"disk of {self._path} is {1 - free:.0%} full")
            return CheckResult(self.name, Status.UNHEALTHY, str(error), figures, error)
        if free <= self.warning_free:
            return CheckResult(self.name, Status.DEGRADED, f"{free:.0%} disk free", figures)
        return CheckResult(self.name, Status.HEALTHY, f"{free:.0%} disk free", figures)


# --- breakers and incidents -----------------------------------------------------------


class BreakersCheck:
    name = "breakers"
    live = True  # reads the breakers in memory: run again whenever the report is read

    def __init__(
        self,
        states: Callable[[], dict[str, str]],
        cooling: Callable[[], dict[str, float]] = dict,
    ) -> None:
        # cooling: the seconds left of each agent a rate limit keeps every call from.
        self._states, self._cooling = states, cooling

    async def run(self) -> CheckResult:
        states, cooling = self._states(), self._cooling()
        isolated = sorted(n for n, s in states.items() if s in ("open", "forced_open"))
        testing = sorted(n for n, s in states.items() if s == "half_open")
        # Disabled by an operator: no breaker guards its calls, which is no failure, but not
        # "closed" either.
        disabled = sorted(n for n, s in states.items() if s == "disabled")
        figures = {"states": states, "isolated": isolated, "halfOpen": testing}
        figures["disabled"] = disabled
        figures["coolingDown"] = {name: round(left, 1) for name, left in sorted(cooling.items())}
        # Closed, yet no call reaches the agent: its fallbacks answer, as for an isolated one
        # (the system state counts both alike), so it is named whatever else is said.
        cool = {n: left for n, left in sorted(cooling.items()) if n not in isolated}
        words = ", ".join(f"{n} ({left:.0f} s left)" for n, left in cool.items())
        cooled = f"cooling down (rate limited): {words}" if cool else ""
        if out := all_but_out(states, isolated, list(cool)):
            return CheckResult(self.name, Status.UNHEALTHY, out, figures)
        if isolated or testing:
            reason = "; ".join(
                filter(None, [f"not closed: {', '.join(isolated + testing)}", cooled])
            )
            return CheckResult(self.name, Status.DEGRADED, reason, figures)
        if cool:
            return CheckResult(self.name, Status.DEGRADED, cooled, figures)
        if disabled:
            reason = f"no breaker open; disabled (calls unguarded): {', '.join(disabled)}"
            return CheckResult(self.name, Status.HEALTHY, reason, figures)
        return CheckResult(self.name, Status.HEALTHY, "every breaker closed", figures)


class IncidentsCheck:
    name = "incidents"
    live = True  # reads the counts the incident service keeps

    def __init__(
        self,
        active: Callable[[], dict[str, int]],
        unread: Callable[[], str | None] = lambda: None,
        alert_at: int = 5,
    ) -> None:
        """``unread``: why ``active`` gives the counts last read, while they cannot be read."""
        self._active, self._unread, self.alert_at = active, unread, alert_at

    async def run(self) -> CheckResult:
        by_severity = self._active()
        total = sum(by_severity.values())
        figures = {"active": total, "bySeverity": by_severity}
        why = self._unread()
        # While the store cannot be read, what was last read, and that it is not current (the
        # stores check says the store is down): never a healthy count.
        counted = f"{total} active incidents" + ("" if why is None else f" when last read; {why}")
        if by_severity.get("critical"):
            reason = "a critical incident is active" + ("" if why is None else f" ({counted})")
            return CheckResult(self.name, Status.UNHEALTHY, reason, figures)
        if why is not None or total >= self.alert_at or by_severity.get("high"):
            return CheckResult(self.name, Status.DEGRADED, counted, figures)
        return CheckResult(self.name, Status.HEALTHY, counted, figures)
