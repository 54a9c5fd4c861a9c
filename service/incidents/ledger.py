"""The idempotency ledger: one row per (fingerprint, startsAt, status) ever received.

Alertmanager retries deliveries and HA pairs send the same notification twice; the ledger
lets each firing or resolution act once. It lives beside the incidents (never rolled back),
in a table of its own on the incident store's database: the incidents SQLite file, or on
PostgreSQL the incidents schema, where replicas that receive one notification at once share
it (its table there is the migrations' component ``alerts``).
The primary key and one ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` make the first
arrival the only one that takes it, whichever writer it reaches. A later delivery takes it
again only when the attempt before failed or was lost with its process (killed before it
wrote its outcome): Alertmanager repeats a firing alert every ``repeat_interval``, so an
action that failed is tried again then, instead of never. On PostgreSQL an attempt also names
its taker (the replica's presence session, ``service.fleet.presence``): one whose taker's
session is gone was lost with that replica (a ``kill -9``), so the next delivery of it (the
other Alertmanager of a pair, the group's next notification) takes it again at once, and a
lost resolution is replayed within a minute, not after 5.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from typing import Any

from service.incidents.model import IncidentStoreUnavailable
from service.incidents.store_pg import SCHEMA
from service.stores.postgres_migrations import Migration
from service.stores.session_names import session_alive, sessions_named
from service.stores.sql import SQLITE, Database, create_table_on_sqlite

log = logging.getLogger("ers.alerts")

COMPONENT = "alerts"

SQLITE_SCHEMA = """CREATE TABLE IF NOT EXISTS alert_ledger (
    fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    status TEXT NOT NULL,
    alertname TEXT NOT NULL,
    received_at REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    incident_id TEXT,
    outcome TEXT,
    alert TEXT,
    taker TEXT,
    delivered_at REAL,
    PRIMARY KEY (fingerprint, starts_at, status)
)"""
KEY = "fingerprint = ? AND starts_at = ? AND status = ?"

# An attempt that has not finished this long after it was taken is taken to be lost (its
# process was killed): longer than an action may run (the responder's limit is 120 s; a
# rollback, which has none, is marked unfinished before it runs, and never taken again).
UNFINISHED_AFTER_S = 300.0
LOST = "failed: lost, the service stopped before it finished; taken again on the next delivery"
# An isolation the responder had run for the incident within its cooldown: the alert asks
# for it again once the cooldown ends, so its next delivery is taken again (and, in the
# process that took it, it runs when the cooldown ends).
COOLDOWN_OUTCOME = "skipped within the cooldown; run once it ends if the alert still fires"
# An isolation in force but not yet saved to outlive the process (its store was out): a kill
# would lose it, so the next delivery is taken again and isolates again.
NOT_KEPT_OUTCOME = "not kept across a restart yet; taken again on the next delivery"
# The outcomes of an isolate alert's firing that hold its agent: another isolate alert's
# resolution leaves the agent isolated while one of these still fires.
ISOLATED = "isolate: success"
ISOLATING = (ISOLATED, f"isolate: {COOLDOWN_OUTCOME}")
# How long a resolution waits for its firing while another writer acts on it: longer than
# an action may run (the responder's limit is 120 s).
FIRING_WAIT_S = 130.0
# A firing holds the incident it landed on open (``firing_on``) while Alertmanager keeps
# repeating it: for twice the longest repeat_interval of alerts/alertmanager.yml (4 h) after
# its last delivery. An alert muted (inhibited, silenced) when it resolved never gets its
# resolution sent; past this it holds nothing, and the incident's quiet period decides.
FIRING_HOLD_S = 8 * 3600.0


def _taker_alive(table: str) -> str:
    """PostgreSQL: the row's taker still runs (or is not known): its presence session is on."""
    return f"({table}.taker IS NULL OR {session_alive(f'{table}.taker')})"


def _retake(dialect: object) -> str:
    """A repeated delivery is acted on again when the last attempt failed (its outcome says
    "failed"), was lost, or is not kept across a restart; the attempt it starts is stamped
    with this delivery's time and taker, which is how record() tells that it took it. Each
    condition reads the row as it was; its parameter is the oldest unfinished time still
    taken to be running."""
    lost = "ledger.received_at < ?"
    if dialect is not SQLITE:
        lost = f"({lost} OR NOT {_taker_alive('ledger')})"
    again = (
        "(ledger.outcome LIKE 'failed%' OR ledger.outcome LIKE '%: failed'"
        f" OR ledger.outcome LIKE '%: {COOLDOWN_OUTCOME}'"
        f" OR ledger.outcome LIKE '%, {NOT_KEPT_OUTCOME}'"
        f" OR (ledger.outcome IS NULL AND {lost}))"
    )
    return ", ".join(
        f"{column} = CASE WHEN {again} THEN {new} ELSE ledger.{column} END"
        for column, new in (
            ("received_at", "excluded.received_at"),
            ("outcome", "NULL"),
            ("taker", "excluded.taker"),
        )
    )


# The ledger's migrations, in order; append a tuple to change it, never edit one.
MIGRATIONS: tuple[Migration, ...] = (
    (
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
        f"""CREATE TABLE {SCHEMA}.alert_ledger (
            fingerprint TEXT NOT NULL,
            starts_at TEXT NOT NULL,
            status TEXT NOT NULL,
            alertname TEXT NOT NULL,
            received_at DOUBLE PRECISION NOT NULL,
            deliveries INTEGER NOT NULL DEFAULT 1,
            incident_id TEXT,
            outcome TEXT,
            PRIMARY KEY (fingerprint, starts_at, status)
        )""",
    ),
    # The alert as delivered: a resolution lost with its process is handled again from it.
    (f"ALTER TABLE {SCHEMA}.alert_ledger ADD COLUMN alert TEXT",),
    # Who took the attempt under way: a replica gone with it lost it.
    (f"ALTER TABLE {SCHEMA}.alert_ledger ADD COLUMN taker TEXT",),
    # When Alertmanager last delivered it: a firing holds its incident while it is repeated.
    (f"ALTER TABLE {SCHEMA}.alert_ledger ADD COLUMN delivered_at DOUBLE PRECISION",),
)


class LedgerUnavailable(Exception):
    """The ledger could not record an alert; the webhook must answer 5xx so it is retried."""


class AlertLedger:
    def __init__(self, database: Database, taker: str | None = None) -> None:
        """The ledger on the incident store's ``database``, which closes with the store;
        ``taker``: the name of this replica's presence session, on PostgreSQL."""
        create_table_on_sqlite(database, SQLITE_SCHEMA)
        if database.dialect is SQLITE:
            columns = {row["name"] for row in database.rows("PRAGMA table_info(alert_ledger)")}
            added = {"alert": "TEXT", "taker": "TEXT", "delivered_at": "REAL"}
            for name, kind in added.items():  # a file from before the ledger kept them
                if name not in columns:
                    database.rows(f"ALTER TABLE alert_ledger ADD COLUMN {name} {kind}")
        self._database = database
        self.taker = taker
        self._retake = _retake(database.dialect)
        # Whether a row's taker still runs: on SQLite, where start-up marks what the process
        # before left unfinished, it is never in doubt.
        self._taker_alive = "TRUE" if database.dialect is SQLITE else _taker_alive("alert_ledger")

    def record(
        self,
        fingerprint: str,
        starts_at: str,
        status: str,
        alertname: str,
        alert: str | None = None,
    ) -> bool:
        """True when this writer is to act on this (fingerprint, startsAt, status): the first
        time it arrives at any writer, or again when the last attempt failed or never
        finished (its process died); else False. ``alert``: the alert as delivered (JSON),
        kept so that a resolution lost with its process can be handled again."""
        now = time.time()
        try:
            rows = self._database.rows(
                "INSERT INTO alert_ledger AS ledger (fingerprint, starts_at, status,"
                " alertname, received_at, alert, taker, delivered_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fingerprint, starts_at, status)"
                f" DO UPDATE SET deliveries = ledger.deliveries + 1, {self._retake},"
                " alert = COALESCE(excluded.alert, ledger.alert),"
                " delivered_at = excluded.delivered_at RETURNING received_at",
                (
                    fingerprint,
                    starts_at,
                    status,
                    alertname,
                    now,
                    alert,
                    self.taker,
                    now,
                    *[now - UNFINISHED_AFTER_S] * 3,
                ),
            )
        except (sqlite3.Error, IncidentStoreUnavailable) as exc:
            raise LedgerUnavailable(f"the alert ledger could not record the alert: {exc}") from exc
        return bool(rows) and rows[0]["received_at"] == now

    def mark_lost(self) -> list[dict[str, Any]]:
        """At start-up, before this process takes any alert: every attempt left unfinished
        by a process that is gone was lost with it (a crash, a ``kill -9``); the next
        delivery of each takes it again. On a file no other process writes, that is every
        unfinished attempt; on PostgreSQL, those whose taker's presence session is gone, or
        that carry this process's own name (a restarted container's process has its
        predecessor's host and pid), never another running replica's. Returns them:
        alertname, status and the incident each landed on (incident_id, None if none yet)."""
        gone, params = "", ()
        if self._database.dialect is not SQLITE:
            # Its own name only while no session but this process's presence carries it: a
            # second is a process still running under it (a replica of another host with
            # this hostname and pid, or the predecessor's session the server has yet to
            # drop), whose attempts are taken again once UNFINISHED_AFTER_S has passed.
            gone = (
                f" AND ((taker IS NOT DISTINCT FROM ? AND {sessions_named('?')} <= 1)"
                f" OR NOT {self._taker_alive})"
            )
            params = (self.taker, self.taker)
        rows = self._database.rows(
            f"UPDATE alert_ledger SET outcome = ? WHERE outcome IS NULL{gone}"
            " RETURNING alertname, status, incident_id",
            (LOST, *params),
        )
        return [dict(row) for row in rows]

    def take_lost_resolutions(self) -> list[str]:
        """Take again every resolution whose attempt was lost with its process (marked lost
        at start-up, or unfinished for ``UNFINISHED_AFTER_S`` or by a replica that is gone,
        on PostgreSQL by any replica)
        and returns each as delivered (JSON). Alertmanager sends a resolution once, so
        nobody else would. A firing is left to Alertmanager's next repeat of it. One taker
        per row: the update's condition no longer holds for the next."""
        now = time.time()
        try:
            rows = self._database.rows(
                "UPDATE alert_ledger SET received_at = ?, outcome = NULL, taker = ?"
                " WHERE status = 'resolved' AND alert IS NOT NULL AND (outcome = ?"
                f" OR (outcome IS NULL AND (received_at < ? OR NOT {self._taker_alive})))"
                " RETURNING alert",
                (now, self.taker, LOST, now - UNFINISHED_AFTER_S),
            )
        except (sqlite3.Error, IncidentStoreUnavailable) as exc:
            raise LedgerUnavailable(f"the alert ledger could not be read: {exc}") from exc
        return [row["alert"] for row in rows]

    def land(self, fingerprint: str, starts_at: str, status: str, incident_id: str) -> None:
        """Keep the incident an alert landed on before its action runs: a resolution finds
        it even when the process dies before the outcome is written."""
        self._database.rows(
            f"UPDATE alert_ledger SET incident_id = ? WHERE {KEY}",
            (incident_id, fingerprint, starts_at, status),
        )

    def finish(
        self,
        fingerprint: str,
        starts_at: str,
        status: str,
        incident_id: str | None,
        outcome: str,
        keep: str | None = None,
    ) -> None:
        """Write the outcome, unless the one there begins with ``keep``."""
        kept = " AND (outcome IS NULL OR outcome NOT LIKE ?)" if keep else ""
        self._database.rows(
            f"UPDATE alert_ledger SET incident_id = ?, outcome = ? WHERE {KEY}{kept}",
            (incident_id, outcome, fingerprint, starts_at, status, *([f"{keep}%"] if keep else [])),
        )

    def entry(self, fingerprint: str, starts_at: str, status: str) -> dict[str, Any] | None:
        rows = self._database.rows(
            f"SELECT deliveries, incident_id, outcome FROM alert_ledger WHERE {KEY}",
            (fingerprint, starts_at, status),
        )
        if not rows:
            return None
        return {
            "deliveries": rows[0]["deliveries"],
            "incidentId": rows[0]["incident_id"],
            "outcome": rows[0]["outcome"],
        }

    def isolating(self, fingerprint: str, since: float) -> list[str]:
        """The alerts other than ``fingerprint`` (as delivered, JSON) whose firing isolated
        an agent since ``since``, or found it isolated within the responder's cooldown, and
        whose resolution has not arrived."""
        rows = self._database.rows(
            "SELECT f.alert FROM alert_ledger f WHERE f.status = 'firing' AND f.fingerprint <> ?"
            " AND f.alert IS NOT NULL AND f.received_at >= ?"
            " AND (f.outcome LIKE ? OR f.outcome = ?)"
            " AND NOT EXISTS (SELECT 1 FROM alert_ledger r WHERE r.fingerprint = f.fingerprint"
            " AND r.starts_at = f.starts_at AND r.status = 'resolved')",
            (fingerprint, since, f"{ISOLATING[0]}%", ISOLATING[1]),
        )
        return [row["alert"] for row in rows]

    def firing_on(self, incident_id: str) -> list[str]:
        """The alerts (as delivered, JSON) whose firing landed on ``incident_id``, was
        delivered within ``FIRING_HOLD_S`` and has no resolution."""
        rows = self._database.rows(
            "SELECT f.alert FROM alert_ledger f WHERE f.status = 'firing' AND f.incident_id = ?"
            " AND f.alert IS NOT NULL AND COALESCE(f.delivered_at, f.received_at) > ?"
            " AND NOT EXISTS (SELECT 1 FROM alert_ledger r WHERE r.fingerprint ="
            " f.fingerprint AND r.starts_at = f.starts_at AND r.status = 'resolved')",
            (incident_id, time.time() - FIRING_HOLD_S),
        )
        return [row["alert"] for row in rows]

    def firings_since(self, since: float) -> list[str]:
        """The alerts (as delivered, JSON) whose firing was first received after ``since``
        and acted on (not found stale). Raises LedgerUnavailable."""
        try:
            rows = self._database.rows(
                "SELECT alert FROM alert_ledger WHERE status = 'firing' AND alert IS NOT NULL"
                " AND received_at > ? AND (outcome IS NULL OR outcome NOT LIKE ?)",
                (since, "stale:%"),
            )
        except (sqlite3.Error, IncidentStoreUnavailable) as exc:
            raise LedgerUnavailable(f"the alert ledger could not be read: {exc}") from exc
        return [row["alert"] for row in rows]

    def left_to_trials(self, ending: str) -> list[tuple[str, str, float]]:
        """The newest resolution (as delivered, JSON) on each incident whose outcome ends in
        ``ending`` (it left the incident to a trial of the agent), with that incident and
        when it was received. Raises LedgerUnavailable."""
        try:
            rows = self._database.rows(
                "SELECT alert, incident_id, received_at FROM alert_ledger"
                " WHERE status = 'resolved'"
                " AND alert IS NOT NULL AND incident_id IS NOT NULL AND outcome LIKE ?"
                " ORDER BY received_at DESC LIMIT 1000",
                (f"%{ending}",),
            )
        except (sqlite3.Error, IncidentStoreUnavailable) as exc:
            raise LedgerUnavailable(f"the alert ledger could not be read: {exc}") from exc
        newest: dict[str, tuple[str, float]] = {}
        for row in rows:
            newest.setdefault(row["incident_id"], (row["alert"], row["received_at"]))
        return [(alert, incident_id, at) for incident_id, (alert, at) in newest.items()]

    def taken_at(self, fingerprint: str, starts_at: str, status: str) -> float | None:
        """When the attempt at a delivery still under way was taken, else None (also when
        its taker is gone)."""
        rows = self._database.rows(
            f"SELECT received_at FROM alert_ledger WHERE {KEY} AND outcome IS NULL"
            f" AND {self._taker_alive}",
            (fingerprint, starts_at, status),
        )
        return float(rows[0]["received_at"]) if rows else None


async def firing_handled(ledger: AlertLedger, fingerprint: str, starts_at: str) -> None:
    """Wait while the firing of a resolved alert is being acted on: on PostgreSQL another
    replica may have taken it a moment before. Its resolution is to undo what the firing
    did, and finding no incident yet it undid nothing, leaving the firing's isolation in
    force with no resolution to come. A firing lost with its process is not waited for."""
    deadline, said = time.monotonic() + FIRING_WAIT_S, False
    while time.monotonic() < deadline:
        taken_at = await asyncio.to_thread(ledger.taken_at, fingerprint, starts_at, "firing")
        if taken_at is None or taken_at < time.time() - UNFINISHED_AFTER_S:
            return
        if not said:
            log.info("alert %s resolved while its firing is acted on: waiting", fingerprint)
            said = True
        await asyncio.sleep(0.2)


async def finish_outcome(
    ledger: AlertLedger, fingerprint: str, starts_at: str, status: str, *outcome: str | None
) -> None:
    """``finish`` (``outcome``: the incident, the outcome and what to keep) off the event
    loop, a busy store (a lock held past the write timeout) waited for, some 15 s besides
    the attempts' own waits: the outcome not written, the alert's next deliveries were
    duplicates of an attempt that seemed to run on. One still not written is said in the
    log, and the attempt is taken again after a while."""
    for wait_s in (1.0, 2.0, 4.0, 8.0, None):
        try:
            await asyncio.to_thread(ledger.finish, fingerprint, starts_at, status, *outcome)
            return
        except Exception as exc:
            if wait_s is None:
                log.error(
                    "the outcome of alert %s (%s) is not in the ledger (%s): its delivery "
                    "after %g s takes it again",
                    fingerprint, outcome[1], exc, UNFINISHED_AFTER_S,
                )  # fmt: skip
                return
            await asyncio.sleep(wait_s)


def isolated_nothing(firing: dict[str, Any] | None) -> bool:
    """The ledger entry of an ``isolate`` alert's firing says it isolated nothing: skipped
    (held by someone else, no such agent) or failed; within the cooldown, the isolation that
    ran holds for it too. Unknown (no entry, no outcome yet) is not taken to be nothing."""
    outcome = (firing or {}).get("outcome") or ""
    return outcome.startswith("isolate: ") and not outcome.startswith(ISOLATING)
