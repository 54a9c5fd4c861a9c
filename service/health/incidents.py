"""Resolves the incident a health check raised once the check has been healthy again for
``resolve_after_s``.

A check that crosses its line raises its incident through the span pipeline
(``health.<check>``, see ``monitor``); while it stays unhealthy each evaluation adds to that
incident. Once every evaluation for ``resolve_after_s`` has found it healthy, its active
incidents are resolved, on their timelines, by ``health``. A check that is merely degraded
is not healthy again yet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from service.health.checks import Status
from service.health.monitor import HealthReport
from service.incidents.model import IllegalTransition, IncidentNotFound
from service.incidents.store import IncidentStore

log = logging.getLogger("ers.health")

ACTOR = "health"
SPAN_PREFIX = "health."


class HealthIncidents:
    def __init__(
        self,
        store: IncidentStore,
        resolve_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.resolve_after_s = resolve_after_s
        self._clock = clock
        self._healthy_since: dict[str, float] = {}
        # Checks that may have an active incident; None until the first report, when every
        # check may (incidents outlive a restart).
        self._suspects: set[str] | None = None
        self._task: asyncio.Task[None] | None = None

    def on_report(self, report: HealthReport) -> None:
        """A health listener: runs on the event loop, so the store is read in a thread."""
        now = self._clock()
        if self._suspects is None:
            self._suspects = set(report.checks)
        due: dict[str, str] = {}
        for name, result in report.checks.items():
            if result.status is not Status.HEALTHY:
                self._healthy_since.pop(name, None)
                if result.status is Status.UNHEALTHY:
                    self._suspects.add(name)
                continue
            since = self._healthy_since.setdefault(name, now)
            if name in self._suspects and now - since >= self.resolve_after_s:
                due[name] = (
                    f"the {name} check has been healthy for {now - since:.0f} s: {result.reason}"
                )
        if due and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._resolve(due))

    async def _resolve(self, due: dict[str, str]) -> None:
        try:
            cleared = await asyncio.to_thread(self._resolve_now, due)
        except Exception:  # the next healthy report tries again
            log.exception("health incidents could not be resolved")
            return
        if self._suspects is not None:
            # Unless the check failed again meanwhile.
            self._suspects -= {name for name in cleared if name in self._healthy_since}

    def _resolve_now(self, due: dict[str, str]) -> list[str]:
        active, _ = self.store.list(status="active", limit=1000)
        for incident in active:
            name = incident.span_name.removeprefix(SPAN_PREFIX)
            if not incident.span_name.startswith(SPAN_PREFIX) or name not in due:
                continue
            try:
                self.store.resolve(incident.id, ACTOR, due[name])
            except (IllegalTransition, IncidentNotFound):
                continue  # resolved by someone else meanwhile
        return list(due)

    async def drain(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
