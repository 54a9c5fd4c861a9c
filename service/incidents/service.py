"""The service's side of incidents: the span pipeline wired to the responder, the metrics,
the chat replies and the system state.

Error spans reach the IncidentProcessor (a span processor); its worker thread classifies and
stores them and publishes events. Here an opened or reopened incident is handed to the event
loop, where the responder runs the protocol's actions; what degraded chat replies say of
incidents is kept by ``service.incidents.replies``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.trace import ReadableSpan

from backup.staging import not_a_database
from service.errors import StateFileUnreadable, StoreUnavailable
from service.incidents import audit, ledger, store_pg
from service.incidents.alert_landing import note_lost, still_firing_on
from service.incidents.audit import AuditLog
from service.incidents.ledger import AlertLedger
from service.incidents.merge import GroupOutcome
from service.incidents.model import (
    IllegalTransition,
    Incident,
    IncidentNotFound,
    IncidentStoreUnavailable,
)
from service.incidents.replies import ReplyIncidents
from service.incidents.responder import ActionResult, Responder, ResponseContext
from service.incidents.store import IncidentStore
from service.incidents.store_pg import PgIncidentStore
from service.resilience.instruments import event_counter, seconds_histogram
from service.settings import Settings
from service.stores.postgres import PostgresDatabase
from service.stores.session_names import presence_name
from service.tasks import spawn
from telemetry.classifier import NOT_AN_INCIDENT, load_rules
from telemetry.incident_processor import IncidentProcessor, server_span_of
from telemetry.span_record import SpanRecord

log = logging.getLogger("ers.incidents")


RECOVERY_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)
# The health endpoint answers 503 to report an unhealthy check; the check that crossed its
# line is the incident (``health.<check>``), never the request that read it.
UNCLASSIFIED_ROUTES = ("/api/emergency/health",)
# A read of the active counts that has not answered in this long (the stores check's wait
# for its write probes) leaves them unread: the last ones read are not current.
COUNTS_ANSWER_WAIT_S = 3.0


def not_an_incident(routes: tuple[str, ...]) -> Callable[[ReadableSpan], bool]:
    on_route = server_span_of(routes)
    return lambda span: on_route(span) or bool((span.attributes or {}).get(NOT_AN_INCIDENT))


# What the incident state needs on PostgreSQL, by migration component: the incidents, the
# alert ledger and the audit trail share one schema and one connection pool.
MIGRATIONS = {
    store_pg.COMPONENT: store_pg.MIGRATIONS,
    ledger.COMPONENT: ledger.MIGRATIONS,
    audit.COMPONENT: audit.MIGRATIONS,
}


async def open_incident_state(
    settings: Settings,
    path: Path,
    database: PostgresDatabase | None,
    is_component_healthy: Callable[[str], bool],
) -> tuple[IncidentStore, AlertLedger, AuditLog]:
    """The incident store, the alert ledger and the audit trail, on one database: the SQLite
    file at ``path``, or, with the stores on PostgreSQL (``database``), one connection pool
    to its ``ers_incidents`` schema, where every replica groups failures into the same
    incidents, takes each alert once and writes one trail. Closing the store closes them."""
    options = {
        "quiet_period_s": settings.incident_quiet_period_s,
        "is_component_healthy": is_component_healthy,
    }
    if database is None or settings.database_url is None:
        try:
            store: IncidentStore = IncidentStore(path, **options)
        except sqlite3.DatabaseError as exc:
            if not not_a_database(exc):
                raise
            out = "the incidents are never rolled back: move it away (keep it), and ERS starts"
            log.error("refusing to start: cannot open %s (%s); %s a new one", path, exc, out)
            raise StateFileUnreadable("incidents", f"cannot open {path}: {exc}") from None
    else:
        await database.migrate(MIGRATIONS)
        url = settings.database_url.get_secret_value()
        try:
            store = await asyncio.to_thread(PgIncidentStore, url, **options)
        except IncidentStoreUnavailable as exc:
            raise StoreUnavailable("incidents", exc.reason) from None
    try:
        # On PostgreSQL an attempt names this replica's presence session: a replica that
        # finds the session gone takes the attempt again.
        taker = None if database is None or settings.database_url is None else presence_name()
        ledger = AlertLedger(store.database, taker)
        # What a process gone left unfinished (on a file the data directory's lock keeps
        # every other process off; on PostgreSQL, a replica whose session is gone) was lost
        # with it: said on its incident's timeline.
        if lost := await asyncio.to_thread(ledger.mark_lost):
            await asyncio.to_thread(note_lost, store, lost)
        return store, ledger, AuditLog(store.database)
    except Exception:
        store.close()
        raise


class IncidentService:
    def __init__(
        self,
        store: IncidentStore,
        meter: Meter,
        *,
        rules_path: Path | None,
        cache_active_counts: bool = False,
        service_name: str = "ers",
        alert_ledger: AlertLedger | None = None,
    ) -> None:
        """``alert_ledger``: an incident an alert opened is not resolved by its quiet period
        while an alert that landed on it still fires (its resolution resolves it).
        ``cache_active_counts``: the store is a database server, so the active counts the
        state machine reads every second come from a cache refreshed off the event loop
        (``run_counts_refresh``) rather than from a query on it. ``service_name``: this
        service's own spans'; an incident of another's acts on none of its agents."""
        self.store = store
        self.service_name = service_name
        self._alert_ledger = alert_ledger
        self._cached_counts: dict[str, int] | None = {} if cache_active_counts else None
        self._counts_stale = asyncio.Event()
        # Since when (monotonic) and why the cached counts could not be read, while they cannot.
        self._counts_unread: tuple[float, str] | None = None
        # Since when (monotonic) the read under way has waited: a frozen server answers no
        # read and raises nothing, so a read that waits this long is unread as well.
        self._reading_since: float | None = None
        self.processor = IncidentProcessor(
            self.store,
            load_rules(rules_path),
            ignore=not_an_incident(UNCLASSIFIED_ROUTES),
            outages=(IncidentStoreUnavailable,),
        )
        self.responder: Responder | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.replies = ReplyIncidents(store)
        self._responded: set[str] = set()
        self._listeners: list[Callable[[GroupOutcome], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._opened = event_counter(meter, "ers_incidents", "Incidents opened or reopened")
        self._recovery = seconds_histogram(
            meter,
            "ers_incident_recovery_seconds",
            "Time from an incident opening to its mitigation or resolution",
            RECOVERY_BUCKETS,
        )
        self.actions = event_counter(
            meter, "ers_protocol_actions", "Protocol actions and their results"
        )
        # Left out of a request the OTLP intake took otherwise (OTLP's partial success): the
        # sender logs them and drops them, so this is where they show here.
        self.spans_rejected = event_counter(
            meter, "ers_intake_spans_rejected", "Spans the OTLP intake left out: invalid ids"
        )
        meter.create_observable_gauge(
            "ers_incidents_active", [self._observe_active], description="Active incidents"
        )
        meter.create_observable_counter(
            "ers_spans_classified",
            [self._observe_classified],
            description="Error spans classified by the incident pipeline",
        )
        meter.create_observable_counter(
            "ers_incident_spans_dropped",
            [self._observe_dropped],
            description="Error spans dropped because the pipeline's queue was full",
        )
        meter.create_observable_counter(
            "ers_incident_spans_joined",
            [self._observe_joined],
            description="Error spans of other services counted as the failure they enclose",
        )
        meter.create_observable_counter(
            "ers_incident_spans_failed",
            [self._observe_failed],
            description="Error spans the pipeline could not classify or write to its store",
        )
        self.processor.subscribe(self._on_event)

    # --- wiring -------------------------------------------------------------------------

    def start(self, responder: Responder | None) -> None:
        self.responder = responder
        self._loop = asyncio.get_running_loop()

    def subscribe(self, listener: Callable[[GroupOutcome], None]) -> None:
        """Called on the event loop for every incident event."""
        self._listeners.append(listener)

    def _on_event(self, event: GroupOutcome) -> None:
        # The processor's worker thread: hand over to the event loop at once.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._handle, event)

    def _handle(self, event: GroupOutcome) -> None:
        incident = event.incident
        self.replies.heard(event)
        self._counts_stale.set()
        if event.outcome in ("opened", "reopened"):
            self.opened(incident)
            self._responded.discard(incident.id)
        # A canary's failure (test-system) opens the incident but does not act on it; the
        # first real failure grouped into it does. Nor does one written late, held through
        # an outage of the incident store: what it would call for may be long over.
        attributes = event.record.attributes
        synthetic = bool(attributes.get("ers.synthetic")) or "ers.held_s" in attributes
        if (
            self.responder is not None
            and not synthetic
            and incident.status != "resolved"  # late failures counted on it
            and incident.id not in self._responded
        ):
            self._responded.add(incident.id)
            spawn(self._tasks, self._respond(incident, self._service_of(event.record)))
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("incident listener failed")

    def _service_of(self, record: SpanRecord) -> str | None:
        """The other service whose failure this is, None for this process's own: a span
        sent to /v1/traces is another's even when it calls itself ERS."""
        if record.received or record.service_name != self.service_name:
            return record.service_name
        return None

    async def _respond(self, incident: Incident, service: str | None) -> None:
        """Run the protocol for the failure (of ``service``'s spans, None: this process's)
        that asked for it."""
        assert self.responder is not None
        context = ResponseContext(
            incident.id,
            incident.protocol or "",
            incident.component,
            f"{incident.severity} {incident.type} incident {incident.id}: {incident.message}",
            episode=incident.reopen_count,
            service=service,
        )
        results = await self.responder.respond(context)
        if len(self._responded) > 10_000:
            self._responded.clear()
        if any(r.action == "isolate" and r.result == "success" for r in results):
            await asyncio.to_thread(self._mitigate, incident.id, "agent isolated; fallbacks answer")

    def on_action(self, context: ResponseContext, result: ActionResult) -> None:
        """An action ran (the responder's or an alert's): counted, and named in the replies."""
        labels = {"protocol": context.protocol, "action": result.action, "result": result.result}
        self.actions.add(1, labels)
        self.replies.acted(context.incident_id, result.action, result.result, context.component)

    def _mitigate(self, incident_id: str, note: str) -> None:
        try:
            incident = self.store.mitigate(incident_id, "responder", note)
        except IllegalTransition:
            return
        self.observe_recovery(incident)

    def opened(self, incident: Incident) -> None:
        """Counted once per opening, and once per reopening."""
        labels = {"severity": incident.severity, "type": incident.type}
        self._opened.add(1, {**labels, "component": incident.component})

    def observe_recovery(self, incident: Incident) -> None:
        """After a change of state: recorded by the change that recovered the incident (its
        mitigation, or a resolution that had none), not again by a later one."""
        first = incident.status == "mitigated" or (
            incident.status == "resolved" and incident.mitigated_at is None
        )
        if first and incident.recovery_time_s is not None:
            self._recovery.record(incident.recovery_time_s, {"severity": incident.severity})

    async def drain(self) -> None:
        """Wait until queued error spans are written and their responses have run."""
        await asyncio.to_thread(self.processor.force_flush, 10_000)
        await asyncio.sleep(0)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def run_auto_resolve(self, every_s: float = 10.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.tick()
            except IncidentStoreUnavailable as exc:  # says what is down; tried again next time
                log.warning("auto-resolve skipped: %s", exc)
            except Exception:
                log.exception("auto-resolve failed")

    def _held(self, incident: Incident) -> bool:
        ledger = self._alert_ledger
        return ledger is not None and still_firing_on(ledger, incident) is not None

    async def tick(self) -> None:
        """Resolve the incidents quiet for long enough; end minimal mode once its incident is
        resolved, whoever resolved it (on PostgreSQL, maybe another replica)."""
        for incident in await asyncio.to_thread(self.store.auto_resolve, None, self._held):
            self.observe_recovery(incident)
        mode = self.responder.minimal_mode if self.responder is not None else None
        if mode is not None and mode.active and mode.incident is not None:
            try:
                incident = await asyncio.to_thread(self.store.get, mode.incident)
            except IncidentNotFound:  # a kept mode's incident from another store: its time runs
                return
            if incident.status == "resolved" and mode.leave_for(incident.id):
                log.warning("minimal response mode ended: %s is resolved", incident.id)

    def shutdown(self) -> None:
        self.processor.shutdown()
        self.store.close()

    # --- what the status reads -------------------------------------------------------------

    def active_counts(self) -> dict[str, int]:
        counts = self._cached_counts
        if counts is None:
            counts = self.store.active_counts_by_severity()
        return {k: v for k, v in counts.items() if v}

    def counts_unread(self) -> str | None:
        """Why the active counts are the last ones read, while the store cannot be read."""
        if (unread := self._counts_unread) is not None:
            since, why = unread
            seconds = time.monotonic() - since
            return f"the incident store has not been readable for {seconds:.0f} s: {why}"
        began = self._reading_since
        if began is not None and (waited := time.monotonic() - began) >= COUNTS_ANSWER_WAIT_S:
            return f"the incident store has not answered a read for {waited:.0f} s"
        return None

    async def changed_by_hand(self) -> None:
        """An operator acknowledged or resolved an incident: what the status reads of the
        active incidents is read again now, not at the next refresh."""
        if self._cached_counts is not None:
            self._cached_counts = await asyncio.to_thread(self.store.active_counts_by_severity)

    async def run_counts_refresh(self, every_s: float = 1.0) -> None:
        """Keep the cached active counts fresh: every ``every_s``, and soon after an
        incident event. A failing read keeps the last counts and is logged once."""
        while True:
            self._reading_since = began = time.monotonic()
            try:
                self._cached_counts = await asyncio.to_thread(self.store.active_counts_by_severity)
            except Exception as exc:
                if self._counts_unread is None:
                    log.warning("active incident counts could not be read: %s", exc)
                    self._counts_unread = (began, str(exc))
            else:
                if self._counts_unread is not None:
                    log.info("active incident counts can be read again")
                self._counts_unread = None
            finally:
                self._reading_since = None
            self._counts_stale.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every_s):
                    await self._counts_stale.wait()
            await asyncio.sleep(0.05)  # events come in bursts: one read for a burst

    # --- metrics ------------------------------------------------------------------------

    def _observe_active(self, options: CallbackOptions) -> Iterable[Observation]:
        counts = self._cached_counts
        if counts is None:
            counts = self.store.active_counts_by_severity()
        for severity, count in counts.items():
            yield Observation(count, {"severity": severity})

    def _observe_classified(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.processor.spans_classified)

    def _observe_dropped(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.processor.spans_dropped)

    def _observe_joined(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.processor.spans_joined)

    def _observe_failed(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self.processor.spans_failed)
