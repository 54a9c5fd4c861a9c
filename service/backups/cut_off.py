"""Rollbacks a kill or a crash cut off: each rollback in the audit trail with no outcome
whose process no longer runs gets the entry ``rollback_interrupted``, which says what became
of the live state: the state before it, or (the trail's ``rollback_swapped`` says so) the
snapshot's, with the safety snapshot that undoes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

from backup.locks import process_is_running
from service.backups.replies import iso
from service.fleet.presence import process_gone
from service.incidents.audit import AuditLog, started_here
from service.incidents.store import IncidentStore
from service.stores import Stores
from service.stores.component import ComponentStore
from service.stores.session_names import presence_name, sessions_named
from service.stores.sql import Statements
from service.tasks import run_in_background

log = logging.getLogger("ers.backups")

# How often a running replica on PostgreSQL looks in the shared trail for a rollback whose
# process is gone: as often as replicas stamp their presence (``service.fleet.presence``).
LOOK_EVERY_S = 5.0


INTERRUPTED = (
    "the process running it stopped before its outcome was written (a kill or a crash, or a "
    "trail it could not write to until it stopped), and the trail has no word that its swap "
    "committed, written as soon as it has (one that could not be written is in the log: "
    "`could not say that the rollback's swap has committed`): the live state is then the one "
    "before it (on SQLite a swap it had begun is undone at the next start: rollback_undone), "
    "unless it stopped between a swap's commit and that word (a second), or on PostgreSQL "
    "while a commit's outcome was unknown (a swap that committed stays): `ers backup "
    "test-rollback` on the snapshot shows which; its safety snapshot, if taken, is tagged "
    "reason:pre-rollback"
)
SWAPPED_THEN_CUT = (
    "the process running it stopped after its swap committed, before its outcome was written: "
    "the components in rolledBack are the snapshot's, the state they had is in "
    "safetyBackupIds (roll back to it to undo)"
)


# Per component, what follows its swap in a rollback (``BackupService``'s ``restored_with``).
AfterSwap = Mapping[str, Callable[[], Awaitable[list[str]]]]
Then = Callable[[], Awaitable[list[str]]]


def after_swaps(restored_lines: Then, answers_dropped: Then, stores: Stores) -> dict[str, Then]:
    """What each component's swap is followed by: system_state's isolations put back; for
    the stores cached answers were read from, their schema brought up to date (one a
    rollback restored from an older release's snapshot on PostgreSQL), those answers
    dropped, and the replies remembered for keyed requests that may tell of writes put
    aside forgotten (``ConversationStore.replies_forgetting``)."""

    def then(component: str) -> Then:
        async def in_turn() -> list[str]:
            lines = []
            # The conversations store too: the forget below writes to it.
            for store in dict.fromkeys([by_name[component], stores.conversations]):
                try:
                    await store.bring_up_to_date()
                except Exception as exc:  # said; what follows may fail for it, and says so
                    log.exception("%s was not brought up to date", store.component)
                    lines.append(f"{store.component} was not brought up to date: {exc}")
            forget = stores.conversations.replies_forgetting(component)
            return [*lines, *await answers_dropped(), *await forget()]

        return in_turn

    by_name: dict[str, ComponentStore] = {
        "conversations": stores.conversations,
        "budgets": stores.budgets,
        "profiles": stores.profiles,
    }

    return {"system_state": restored_lines} | {name: then(name) for name in by_name}


async def record_interrupted_at_start(
    audit: AuditLog, incidents: IncidentStore | None
) -> list[dict[str, object]]:
    """``record_interrupted`` at the service's start, before anything can roll back; what
    follows their swaps is left to ``after_swaps_cut_off`` once the service has its parts."""
    return await asyncio.to_thread(record_interrupted, audit, incidents)


async def after_the_swap(after: AfterSwap, components: Sequence[str]) -> list[str]:
    """What follows the swap of each of ``components`` (``after_swaps``), run once each, in
    words; one that fails is said, and the rest still run: the rollback stands."""
    lines: list[str] = []
    done: set[Then] = set()
    for component in components:
        if (then := after.get(component)) is None or then in done:
            continue
        done.add(then)
        try:
            lines += await then()
        except Exception as exc:
            log.exception("what follows the swap of %s failed after its rollback", component)
            lines.append(f"{component} is rolled back, but what follows its swap failed ({exc})")
    return lines


async def after_swaps_cut_off(recorded: Sequence[dict[str, Any]], after: AfterSwap) -> None:
    """What a rollback cut off after its swap never ran, run by the process that records it
    cut off: for each component rolled back, what follows its swap (system_state's
    isolations put back; the cached answers that told of the state put aside dropped, and
    the fleet's token of it moved, so that every replica drops its own). Once each."""
    rolled_back = [c for detail in recorded for c in detail.get("rolledBack") or ()]
    if not rolled_back:
        return
    named = ", ".join(dict.fromkeys(rolled_back))
    lines = await after_the_swap(after, list(dict.fromkeys(rolled_back)))
    said = f": {'; '.join(lines)}" if lines else ""
    log.warning("what follows the swap of %s a rollback cut off: done%s", named, said)


def keep_looking(
    stack: AsyncExitStack,
    audit: AuditLog,
    incidents: IncidentStore | None,
    after: AfterSwap | None = None,
    every_s: float = LOOK_EVERY_S,
) -> None:
    """On PostgreSQL, ``record_interrupted`` every ``every_s`` while the trail holds a
    rollback with no outcome: a replica killed in the middle of one (its rollback lock
    freed, the writes that waited on it let through) is recorded by the replicas still
    running, as a start records it, once the fleet's database no longer sees it (its
    session gone, its presence stamp older than ``SEEN_WITHIN_S``); so is a replica killed
    just before this start, still seen then. A rollback this process started is left
    alone; what follows their swaps is run (``after_swaps_cut_off``). The looks stop when
    ``stack`` unwinds to here, so it is registered after what closes the trail's database."""
    if not audit.shared:
        return

    async def looking() -> None:
        while True:
            await asyncio.sleep(every_s)
            if await asyncio.to_thread(_has_unfinished, audit):
                recorded = await asyncio.to_thread(record_interrupted, audit, incidents)
                await after_swaps_cut_off(recorded, after or {})

    run_in_background(stack, looking(), "rollbacks-cut-off")


def _has_unfinished(audit: AuditLog) -> bool:
    """Whether the trail holds a rollback with no outcome; False while it cannot be read
    (the stores check says so, and this look comes again)."""
    try:
        return bool(audit.unfinished_rollbacks())
    except Exception as exc:
        log.debug("could not read the audit trail's rollbacks: %s", exc)
        return False


def record_interrupted(
    audit: AuditLog, incidents: IncidentStore | None = None
) -> list[dict[str, object]]:
    """Blocking; at the service's start, before anything can roll back, and while it runs
    (``keep_looking``). Each rollback in the trail with no outcome whose process no longer
    runs gets the entry ``rollback_interrupted`` (actor ``ers``) naming it; returns those
    entries' details. A process of this host is looked for by its pid, and one with this
    process's pid counts as gone unless this process started the rollback
    (``started_here``): on a restart in a container, ERS has the same pid every time. On
    PostgreSQL, a process of another host is gone when the fleet's database has neither a
    session of it nor a recent presence stamp (``service.fleet.presence``); on SQLite only
    this host's rollbacks are in the trail. A rollback for an incident gets a note on its
    timeline too."""
    try:
        return _record_interrupted(audit, incidents)
    except Exception as exc:  # an unwritable trail, a database down: health says so
        log.warning("could not look for rollbacks cut off in the audit trail: %s", exc)
        return []


def _record_interrupted(
    audit: AuditLog, incidents: IncidentStore | None
) -> list[dict[str, object]]:
    host, pid = socket.gethostname(), os.getpid()

    def cut_off(db: Statements, entry: dict[str, Any]) -> dict[str, Any] | None:
        started = entry["detail"]
        of = int(started.get("pid") or 0)
        if started.get("host") == host:
            # On PostgreSQL the fleet's database has a say too: hosts may share a hostname
            # (and containers pid 1), and a pid not running here may run there.
            if of != pid and (
                process_is_running(of) or (audit.shared and not process_gone(db, host, of))
            ):
                return None
            if of == pid and started_here(started.get("run")):
                return None  # this process's own, running
            if of == pid and audit.shared and _name_shared(db):
                return None  # another process runs under this one's name
        elif not (audit.shared and process_gone(db, str(started.get("host")), of)):
            return None
        detail = {
            key: started.get(key)
            for key in ("run", "backupId", "components", "beforeIncident", "reason", "host", "pid")
        } | {"startedBy": entry["actor"], "startedAt": _iso(entry["at"]), "outcome": INTERRUPTED}
        if swaps := entry["swapped"]:
            detail |= {
                "outcome": SWAPPED_THEN_CUT,
                "backupId": swaps[-1]["backupId"],
                "rolledBack": [c for swap in swaps for c in swap["components"]],
                "backupIds": {c: swap["backupId"] for swap in swaps for c in swap["components"]},
                "safetyBackupIds": {
                    c: swap["safetyBackupId"] for swap in swaps for c in swap["components"]
                },
            }
        return detail

    recorded = audit.record_cut_off(cut_off)
    for detail in recorded:
        before = detail.get("beforeIncident")
        target = detail.get("backupId") or f"the snapshot before {before}"
        done = _swapped_words(detail)
        log.warning(
            "the audit trail's rollback %s to %s (started by %s on %s) has no outcome: the "
            "process running it stopped first%s; recorded as rollback_interrupted",
            detail["run"],
            target,
            detail["startedBy"],
            detail["host"],
            f", after its swap committed: {done}" if done else "",
        )
        if before and incidents is not None:
            words = f"after its swap committed: {done}" if done else INTERRUPTED
            note = f"rollback cut off: {words}"
            with contextlib.suppress(LookupError):
                incidents.add_timeline(before, "note", note, "ers", {"run": detail["run"]})
    return recorded


def _swapped_words(detail: dict[str, Any]) -> str:
    """What a rollback cut off after its swap did, in words; "" when no swap is known."""
    kept, targets = detail.get("safetyBackupIds") or {}, detail.get("backupIds") or {}
    return "; ".join(
        f"{component} rolled back to {str(targets.get(component))[:8]} (the state before in "
        f"safety snapshot {str(safety)[:8]})"
        for component, safety in kept.items()
    )


def _name_shared(db: Statements) -> bool:
    """Whether a session besides this process's presence carries its name: a replica of
    another host with this hostname and pid, or the session of this process's predecessor
    the server has yet to drop (looked at again every ``LOOK_EVERY_S``)."""
    sessions = db.execute(f"SELECT {sessions_named('?')} AS n", (presence_name(),))
    return int(sessions.fetchone()["n"]) > 1


def _iso(at: object) -> object:
    """The trail's own time of an entry (seconds since the epoch), as every other time."""
    if isinstance(at, int | float):
        return iso(datetime.fromtimestamp(at, UTC))
    return at
