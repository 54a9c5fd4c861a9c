"""The audit trail of an offline rollback (``ers backup --offline rollback``), and of the undo
of a swap a kill cut off, done by any offline command: the service's own, written as actor
``offline``, and told on stderr when it cannot be written."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from backup import swap_journal


class OfflineTrail:
    """The service's audit trail, for an offline rollback to be in it as the service's are
    (actor ``offline``). A trail that cannot be written must not stop the rollback: each
    entry is tried again for ``retry_for_s`` (a database restarting), then kept, and `tell`
    says once, on stderr, what to record by hand."""

    def __init__(self, audit: Any, *, retry_for_s: float = 5.0, pause_s: float = 0.25) -> None:
        self.problem = ""
        self.unwritten: list[tuple[str, dict[str, Any]]] = []
        self._audit = audit
        self._retry_for_s, self._pause_s = retry_for_s, pause_s
        self._told = False

    def record(self, action: str, detail: dict[str, Any]) -> None:
        """Blocking, and so not cut short by an interrupt of the event loop's task."""
        deadline = time.monotonic() + self._retry_for_s
        while self._audit is not None:
            try:
                self._audit.record("offline", action, detail)
                return
            except Exception as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                self.problem = f"writing it failed ({reason})"
                if time.monotonic() >= deadline:
                    break
            time.sleep(self._pause_s)
        self.unwritten.append((action, detail))

    def swaps(self) -> dict[Any, dict[str, Any]]:
        """Blocking: the rollbacks' swaps the trail tells of (``AuditLog.swaps``); none when
        it cannot be read."""
        try:
            return self._audit.swaps() if self._audit is not None else {}
        except Exception as exc:
            self.problem = self.problem or f"reading it failed ({exc})"
            return {}

    def untold(self) -> str | None:
        """What the trail lacks, as the entry to record; None when the outcome is in it (a
        start alone not written is no loss: the outcome names the same run)."""
        from service.incidents.audit import ROLLBACK_STARTED, ROLLBACK_SWAPPED

        outcomes = [
            (a, d) for a, d in self.unwritten if a not in (ROLLBACK_STARTED, ROLLBACK_SWAPPED)
        ]
        if not outcomes:
            return None
        action, detail = outcomes[-1]
        entry = json.dumps(detail, sort_keys=True, default=str)
        what = "undo of a rollback" if action == "rollback_undone" else "rollback"
        return (
            f"the {what} is not in the audit trail: {self.problem or 'it cannot be opened'}; "
            f"record it by hand: actor offline, action {action}, detail {entry}"
        )

    def tell(self) -> str | None:
        said = self.untold()
        if said and not self._told:
            self._told = True
            print(f"ers: {said}", file=sys.stderr)
        return said


def incident_database(settings: Any) -> Any:
    """The database of the incidents and the audit trail: their SQLite file, or their schema
    on PostgreSQL."""
    if settings.database_url is None:
        from service.stores.sql import SqliteDatabase

        return SqliteDatabase(settings.data_dir / "incidents.sqlite3")
    from service.incidents.model import IncidentStoreUnavailable
    from service.incidents.store_pg import SCHEMA
    from service.stores.pg_pool import PgPool

    return PgPool(
        settings.database_url.get_secret_value(),
        name="ers-offline-audit",
        unavailable=IncidentStoreUnavailable,
        schema=SCHEMA,
        tables=("audit",),
        component="incidents, alerts, audit",
        min_size=1,
        max_size=1,
    )


@contextlib.contextmanager
def audit_trail(settings: Any) -> Iterator[OfflineTrail]:
    database: Any = None
    try:
        database = incident_database(settings)
        from service.incidents.audit import AuditLog

        trail = OfflineTrail(AuditLog(database))
    except Exception as exc:
        trail = OfflineTrail(None)
        trail.problem = f"it cannot be opened ({exc})"
    try:
        yield trail
    finally:
        trail.tell()
        if database is not None:
            with contextlib.suppress(Exception):
                database.close()


async def undo_interrupted_swap(settings: Any) -> None:
    """A rollback's swap a kill cut off is undone before anything opens the files, as the
    service's start does, and written in the audit trail (``rollback_undone``) as the
    service writes it."""
    if settings.database_url is not None:  # one transaction: nothing to undo
        return
    undone = await asyncio.to_thread(swap_journal.recover, [settings.data_dir])
    if undone:
        with audit_trail(settings) as trail:
            for swap in undone:
                await asyncio.to_thread(trail.record, "rollback_undone", swap.record())
