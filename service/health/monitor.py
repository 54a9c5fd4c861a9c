"""Runs the health checks every interval and on demand; reports critical ones as error spans.

An unhealthy check that stands for an error (memory pressure, a store that cannot be
written, a check that raised or hung) becomes a span ``health.<check>`` with status ERROR
and the exception recorded, so the incident pipeline classifies it like any failed call: no
side channel. The error's message carries the check's figure and varies only in numbers, so
every failure of one check groups into one incident, named after the check. Checks that sum
up other signals (breakers, incidents) carry no error: what they count is already an
incident. ``health.incidents.HealthIncidents`` resolves a check's incident once it has been
healthy again for a while.

Those two read only the process's memory (``live = True``): they run last in every
evaluation, and again whenever the report is read (``refresh``) or a breaker changes state,
so a report never says "healthy" about breakers that opened since the last interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status as SpanStatus
from opentelemetry.trace import StatusCode

from service.health.checks import CheckResult, HealthCheck, HealthCheckFailed, Status, worst
from service.tasks import cancel_and_wait
from telemetry.exception_events import described, record_failure

log = logging.getLogger("ers.health")

CHECK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class HealthReport:
    overall: Status
    checks: dict[str, CheckResult]
    at: float = field(default_factory=time.time)
    duration_s: float = 0.0
    # When every check last ran: a report refreshed since has its live checks newer.
    full_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall.value,
            "checkedAt": self.at,
            "durationMs": round(self.duration_s * 1000, 2),
            "checks": {name: result.as_dict() for name, result in self.checks.items()},
        }

    def unhealthy(self) -> list[str]:
        return sorted(n for n, r in self.checks.items() if r.status is Status.UNHEALTHY)


def _is_live(check: HealthCheck) -> bool:
    return getattr(check, "live", False)


class HealthMonitor:
    def __init__(
        self,
        checks: list[HealthCheck],
        tracer: trace.Tracer,
        interval_s: float = 30.0,
    ) -> None:
        self.checks = checks
        self.interval_s = interval_s
        self._tracer = tracer
        self._listeners: list[Callable[[HealthReport], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._refresh_task: asyncio.Task[HealthReport | None] | None = None
        self.last: HealthReport | None = None

    def subscribe(self, listener: Callable[[HealthReport], None]) -> None:
        self._listeners.append(listener)

    async def evaluate(self) -> HealthReport:
        started = time.perf_counter()
        slow = [check for check in self.checks if not _is_live(check)]
        results = list(await asyncio.gather(*(self._run(check) for check in slow)))
        # The live checks as of the moment the report is made, not of when it began.
        results += await self._run_live()
        return self._publish(results, {}, time.perf_counter() - started)

    async def refresh(self) -> HealthReport | None:
        """The last report with its live checks run again now; None before the first."""
        if self.last is None:
            return None
        live = await self._run_live()
        # Read after the live checks: a full report published meanwhile is the newer one.
        last = self.last
        return self._publish(live, last.checks, last.duration_s, full_at=last.full_at)

    def refresh_soon(self) -> None:
        """``refresh`` in a task of its own, one at a time: what a live check reads changed."""
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.get_running_loop().create_task(self.refresh())

    async def _run_live(self) -> list[CheckResult]:
        return [await self._run(check) for check in self.checks if _is_live(check)]

    def _publish(
        self,
        results: list[CheckResult],
        earlier: dict[str, CheckResult],
        duration_s: float,
        full_at: float | None = None,
    ) -> HealthReport:
        checks = {**earlier, **{r.name: r for r in results}}
        # In the checks' order, whichever of them ran now.
        ordered = {c.name: checks[c.name] for c in self.checks if c.name in checks}
        report = HealthReport(
            overall=worst([r.status for r in ordered.values()]),
            checks=ordered,
            duration_s=duration_s,
            full_at=time.time() if full_at is None else full_at,
        )
        self.last = report
        for result in results:
            if result.status is Status.UNHEALTHY and result.error is not None:
                self._report_error(result)
        for listener in self._listeners:
            try:
                listener(report)
            except Exception:
                log.exception("health listener failed")
        return report

    async def _run(self, check: HealthCheck) -> CheckResult:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                return await check.run()
        except TimeoutError:
            reason = f"the check took over {CHECK_TIMEOUT_S:g} s"
            error = HealthCheckFailed(f"the {check.name} check took over {CHECK_TIMEOUT_S:g} s")
            return CheckResult(check.name, Status.UNHEALTHY, reason, error=error)
        except Exception as exc:
            reason = f"the check failed: {described(exc)}"
            error = HealthCheckFailed(f"the {check.name} check raised {type(exc).__name__}")
            return CheckResult(check.name, Status.UNHEALTHY, reason, error=error)

    def _report_error(self, result: CheckResult) -> None:
        error = result.error
        assert error is not None
        with self._tracer.start_as_current_span(
            f"health.{result.name}",
            attributes={"ers.check": result.name, "ers.component": result.component},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            record_failure(span, error)
            span.set_status(SpanStatus(StatusCode.ERROR, f"{type(error).__name__}: {error}"))

    def evaluate_soon(self) -> None:
        """Run the checks now rather than at the end of the interval: something they read
        has just changed (the backup repository answered or failed for the first time)."""
        self._wake.set()

    def check_soon(self, name: str, every_s: float = 5.0) -> None:
        """``evaluate_soon`` when the last report found check ``name`` healthy: a request has
        just met what it checks failing (a store that cannot be used). At most once every
        ``every_s`` of that check's result, however many requests meet the failure."""
        result = self.last.checks.get(name) if self.last is not None else None
        if result is None or result.status is not Status.HEALTHY:
            return  # the first report is on its way, or this one knows already
        if time.time() - result.at >= every_s:
            self.evaluate_soon()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="health")

    async def stop(self) -> None:
        await cancel_and_wait(self._task, self._refresh_task)

    async def _loop(self) -> None:
        while True:
            self._wake.clear()  # a wake-up during the evaluation runs the checks once more
            try:
                await self.evaluate()
            except Exception:
                log.exception("health evaluation failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
