"""The emergency-backup cooldown: after an emergency backup, another asked for within
``seconds`` is answered with that one (marked coalesced) instead of a new snapshot.

Its end is a wall-clock moment that can be kept and put back (``record`` / ``resume``), and
``subscribe`` calls back on every change, so the service can keep it with its other switches
and a restart, even a ``kill -9``, does not start the cooldown over with an emergency backup.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from backup.models import BackupReason, BackupResult


class EmergencyCooldown:
    def __init__(
        self,
        seconds: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.seconds = seconds
        self._clock = clock
        self._wall_clock = wall_clock
        # The last emergency backup, and the monotonic moment its cooldown ends.
        self._last: tuple[float, BackupResult] | None = None
        self._listeners: list[Callable[[], None]] = []

    def recent(self) -> BackupResult | None:
        """The emergency backup whose cooldown runs now, or None."""
        if self._last is None:
            return None
        until, result = self._last
        return result if self._clock() < until else None

    def remaining(self) -> float:
        return max(0.0, self._last[0] - self._clock()) if self._last else 0.0

    def started(self, result: BackupResult) -> None:
        """An emergency backup was taken: its cooldown starts now."""
        self._last = (self._clock() + self.seconds, result)
        self._changed()

    def end(self) -> None:
        """The cooldown ends now: the state its backup holds is no longer the live one."""
        if self._last is not None:
            self._last = None
            self._changed()

    # --- kept across restarts -------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def record(self) -> dict[str, Any] | None:
        left = self.remaining()
        if self._last is None or left <= 0:
            return None
        result = self._last[1]
        return {
            "until": self._wall_clock() + left,
            "seconds": self.seconds,
            "snapshotId": result.snapshot_id,
            "snapshots": [[i, list(components)] for i, components in result.snapshots],
            "components": list(result.components),
            "skipped": list(result.skipped),
            "startedAt": result.started_at.isoformat(),
        }

    def resume(self, record: dict[str, Any]) -> str | None:
        """Put back a kept cooldown whose end has not passed (never past ``seconds`` from
        where it began, should the setting have been lowered: not again at every start);
        what was done, in words."""
        until = float(record["until"])
        if "seconds" in record:  # from where it began, as long as this process has it
            until = min(until, until - float(record["seconds"]) + self.seconds)
        if (left := min(until - self._wall_clock(), self.seconds)) <= 0:
            return None
        made = tuple((str(i), tuple(c)) for i, c in record.get("snapshots") or ())
        result = BackupResult(
            snapshot_id=record.get("snapshotId"),
            reason=BackupReason.EMERGENCY,
            components=tuple(record.get("components") or ()),
            skipped=tuple(record.get("skipped") or ()),
            started_at=datetime.fromisoformat(record["startedAt"]),
            duration_seconds=0.0,
            made=made if len(made) > 1 else (),
        )
        if self.recent() is None:
            self._last = (self._clock() + left, result)
        return (
            f"emergency backup cooldown: {left:.0f} s more "
            f"(the last emergency backup is snapshot {result.snapshot_id})"
        )

    def coalesced(self) -> BackupResult | None:
        """The running cooldown's backup marked as the answer to another request, or None."""
        recent = self.recent()
        return None if recent is None else dataclasses.replace(recent, coalesced=True)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()
