"""The ERS application: construction and the lifespan that wires everything together.

Read the lifespan top to bottom to see how the parts connect: telemetry (built with the
app, because the HTTP telemetry middleware needs it), state stores, the guarded team of agents,
and the chat service.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

# The HTTP semantic conventions are pinned so that the OpenTelemetry instrumentations loaded in
# this process name what they record as ERS's own HTTP telemetry does (the stable names).
os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "http"

from fastapi import FastAPI  # noqa: E402

from backup.emergency import EmergencyCooldown  # noqa: E402
from service.agents.config import load_team_config  # noqa: E402
from service.backups import cut_off as cutting  # noqa: E402
from service.backups import first_start as starting  # noqa: E402
from service.backups.fleet_cooldown import EMERGENCY_COOLDOWN_KEY  # noqa: E402
from service.backups.jobs import build_backups, start_backup_jobs  # noqa: E402
from service.backups.rollbacks import Rollbacks  # noqa: E402
from service.chat.admission import ChatAdmission, register_admission_metrics  # noqa: E402
from service.chat.minimal_mode import MinimalMode, MinimalModeGate  # noqa: E402
from service.chat.service import ChatService  # noqa: E402
from service.chat.team import breaker_configs, build_team  # noqa: E402
from service.config_checks import unknown_variables  # noqa: E402
from service.fleet import FleetOverrides  # noqa: E402
from service.fleet.datadir_lock import hold_state  # noqa: E402
from service.health.build import (
    FailingSubsystems,  # noqa: E402
    start_health,  # noqa: E402
)
from service.health.checks import memory_share  # noqa: E402
from service.incidents.alert_webhook import AlertHandler  # noqa: E402
from service.incidents.responder import Responder  # noqa: E402
from service.incidents.service import IncidentService, open_incident_state  # noqa: E402
from service.incidents.state_notes import StateNotes  # noqa: E402
from service.incidents.store_pg import PgIncidentStore  # noqa: E402
from service.incidents.trace_archive_pg import open_trace_archive  # noqa: E402
from service.resilience.breaker_events import BreakerEventKind  # noqa: E402
from service.resilience.breaker_metrics import BreakerMetrics  # noqa: E402
from service.resilience.bulkhead import register_bulkhead_metrics  # noqa: E402
from service.resilience.fallback import ROLLED_BACK_KEY, AnswersRolledBack  # noqa: E402
from service.resilience.faults import FaultInjector  # noqa: E402
from service.resilience.instruments import AgentInstruments  # noqa: E402
from service.resilience.state_keeper import StateKeeper, follow_the_fleet  # noqa: E402
from service.resilience.system_state import (  # noqa: E402
    StateInputs,
    SystemStateMachine,
    tick_state,  # noqa: E402
)
from service.settings import Settings, SettingsError, load_settings  # noqa: E402
from service.tasks import run_in_background  # noqa: E402
from service.web import http_errors, openapi  # noqa: E402
from service.web.body_limit import BodySizeLimit  # noqa: E402
from service.web.http_telemetry import HttpTelemetry, request_durations  # noqa: E402
from service.web.kept_traces import KeptTraces  # noqa: E402
from service.web.production import check_production  # noqa: E402
from service.web.routes import (  # noqa: E402
    alerts,
    breakers,
    chat,
    faults,
    incidents,
    intake,
    probes,
    profiles,
    status,
)
from service.web.routes import backups as backup_routes  # noqa: E402
from service.web.runtime import Readiness, Runtime  # noqa: E402
from telemetry.classifier import RulesError, load_rules  # noqa: E402
from telemetry.providers import Telemetry, build_telemetry  # noqa: E402
from telemetry.trace_keeper import TraceKeeper  # noqa: E402

log = logging.getLogger("ers")

UNTRACED_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


def check_rules(settings: Settings) -> None:
    """An invalid classification rules file stops start-up, naming the rule and the reason."""
    try:
        load_rules(settings.classification_rules)
    except RulesError as exc:
        raise SettingsError(f"invalid setting 'classification_rules': {exc}") from None


def service_version() -> str:
    try:
        return version("emergency-response")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    check_production(settings)
    breaker_configs(settings)  # an invalid per-agent override stops start-up here, in one line
    load_team_config(settings)  # so does an agent that does not load, or a route to none
    check_rules(settings)
    telemetry = build_telemetry(
        settings.service_name, service_version(), enabled=settings.telemetry_enabled
    )
    app = FastAPI(
        title="ERS",
        summary="Emergency response for a team of AI agents",
        version=service_version(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.telemetry = telemetry
    http_errors.install(app)
    app.openapi = openapi.document(app, settings)  # type: ignore[method-assign]
    app.include_router(chat.router)
    app.include_router(profiles.router)
    app.include_router(breakers.router)
    app.include_router(status.router)
    app.include_router(backup_routes.router)
    app.include_router(incidents.router)
    app.include_router(alerts.router)
    app.include_router(intake.router)
    if settings.fault_injection:
        app.include_router(faults.router)
    app.include_router(probes.router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(intake.ProtobufErrors)  # outside the limit: its 413 too
    if settings.telemetry_enabled:  # outermost: a request refused for its size is traced too
        app.add_middleware(
            HttpTelemetry,
            tracer=telemetry.tracer,
            durations=request_durations(telemetry.registry),
            untraced=UNTRACED_PATHS,
            routes=app.routes,
        )
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The state is this service's from before anything opens it until after all is closed:
    # a second service, or an offline rollback, would change files under the open stores.
    held = getattr(app.state, "data_dir_lock", None)
    async with hold_state(app.state.settings, held), _lifespan(app):
        yield


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    telemetry: Telemetry = app.state.telemetry
    # Each part is built from the parts before it and registers its own stop right after:
    # the stack stops them in the reverse order.
    async with AsyncExitStack() as stack:
        # Off the loop: the trace keeper's last writes may go to the database.
        stack.push_async_callback(asyncio.to_thread, telemetry.shutdown)
        # Routes answer 503 again once everything they reach is stopped.
        stack.callback(setattr, app.state, "runtime", None)
        readiness = Readiness()
        # Before any store opens a file: a rollback cut short in its swap is undone.
        undone = await asyncio.to_thread(starting.undo_interrupted_swap, settings)
        # Only a start that finds no state at all may create the backup repository by itself.
        first_start = await asyncio.to_thread(
            starting.finds_no_state, settings.data_dir, backups_enabled=settings.backups_enabled
        )
        # State: one SQLite file per component, or one PostgreSQL schema each.
        stores = await starting.open_state(settings)
        stack.push_async_callback(stores.close)

        # The team: every agent behind its breaker, timeout, retries and fallback.
        instruments = (
            AgentInstruments.create(telemetry.meter, telemetry.registry)
            if telemetry.enabled
            else None
        )
        faults = FaultInjector() if settings.fault_injection else None
        team = await asyncio.to_thread(  # as a restart builds an agent: see build_team
            build_team,
            stores,
            telemetry.tracer,
            instruments,
            faults,
            settings,
            tracer_provider=telemetry.tracer_provider,
        )
        stack.push_async_callback(team.aclose)
        register_bulkhead_metrics(telemetry.meter, team.guards)
        breaker_metrics = BreakerMetrics(telemetry.meter)
        breaker_metrics.attach(team.breakers())
        stack.callback(breaker_metrics.detach)
        # Fleet: on PostgreSQL, a breaker forced open (or released) here is forced open (or
        # released) in every replica, and theirs here; nothing changes on SQLite.
        fleet = FleetOverrides.from_settings(settings, stores, team.breakers())
        if fleet is not None:
            await fleet.start()
            stack.push_async_callback(fleet.stop)

        # Incidents: error spans are classified and grouped off the request path. Their
        # database also holds the alert ledger and the audit trail, and is backed up, never
        # rolled back.
        incidents_path = settings.data_dir / "incidents.sqlite3"
        incident_store, alert_ledger, audit = await open_incident_state(
            settings,
            incidents_path,
            stores.database,
            is_component_healthy=team.is_healthy,
        )
        for swap in undone:  # the trail says what start-up did besides its log line
            await asyncio.to_thread(audit.record, "ers", "rollback_undone", swap.record())
        incident_service = IncidentService(
            incident_store,
            telemetry.meter,
            rules_path=settings.classification_rules,
            cache_active_counts=stores.database is not None,
            service_name=settings.service_name,
            alert_ledger=alert_ledger,
        )
        telemetry.add_span_processor(incident_service.processor)
        # Kept traces an incident names also go to a bounded archive within a second (a file,
        # or the fleet's table on PostgreSQL), so incident trace links outlive a restart, a
        # kill -9 too (a clean stop writes all kept traces), and answer on every replica.
        trace_archive = await open_trace_archive(settings, stores.database)
        trace_keeper = TraceKeeper(archive=trace_archive)
        telemetry.add_span_processor(trace_keeper)
        incident_service.subscribe(
            lambda event: trace_keeper.name(event.incident.id, event.incident.trace_ids)
        )
        run_in_background(stack, trace_keeper.run_archiving(), "kept-trace-archiving")

        # The system state follows the breakers, the incidents and the health checks.
        failing = FailingSubsystems()
        state = SystemStateMachine(
            StateInputs(
                breaker_states=team.breaker_states,
                active_incidents=incident_service.active_counts,
                failing_subsystems=failing.names,
                cooling_down=team.cooling_down,
            ),
            recovery_clean_s=settings.recovery_clean_s,
        )
        for breaker in team.breakers():
            breaker.subscribe(lambda event: state.evaluate(), [BreakerEventKind.STATE_TRANSITION])
            breaker.subscribe(  # a renewal may be for another incident: replies name it
                functools.partial(incident_service.replies.on_breaker_transition, breaker=breaker),
                [BreakerEventKind.STATE_TRANSITION, BreakerEventKind.FORCE_RENEWED],
            )
        incident_service.subscribe(lambda event: state.evaluate())
        state_notes = StateNotes(incident_store, fleet.replica if fleet is not None else "")
        state.subscribe(state_notes)
        # Isolations (forced opens, disabled breakers), the system state, minimal mode, the
        # agents' rate-limit cooldowns and the emergency-backup cooldown outlive a restart:
        # kept in system_state and put back here, after the fleet's own forced opens.
        minimal_mode = MinimalMode()
        cooldowns = {f"cooldown:{name}": guard.cooldown for name, guard in team.guards.items()}
        rolled_back = AnswersRolledBack(team.answers)  # cached answers a rollback outdated
        for cooldown in cooldowns.values():  # one starting or reset moves the state at once
            cooldown.subscribe(lambda: state.evaluate())
        emergency_cooldown = EmergencyCooldown(settings.emergency_backup_cooldown_s)
        keeper = StateKeeper(
            stores.system_state,
            team.breakers(),
            state,
            switches={
                "minimal_mode": minimal_mode,
                EMERGENCY_COOLDOWN_KEY: emergency_cooldown,
                ROLLED_BACK_KEY: rolled_back,
                **cooldowns,
            },
        )
        await keeper.start()
        stack.push_async_callback(keeper.stop)
        if settings.database_url is not None:
            kept, every_s = stores.system_state, settings.fleet_poll_interval_s
            followed = {"minimal_mode": minimal_mode, ROLLED_BACK_KEY: rolled_back, **cooldowns}
            following = follow_the_fleet(followed, kept, every_s, keeper.pending, state.evaluate)
            run_in_background(stack, following, "kept-switches-fleet")
        # A call turned away by a kept isolation names the incident it was forced open for.
        await incident_service.replies.name_kept_isolations(team.breakers())

        after_swap = cutting.after_swaps(  # run here too for a rollback cut off after it
            keeper.restored_lines, rolled_back.dropped, stores
        )
        # A rollback a kill cut off is in the trail by its start alone; it gets the word that
        # its process stopped first (rollback_interrupted), told here with all it needs.
        cut_off = await cutting.record_interrupted_at_start(audit, incident_store)
        await cutting.after_swaps_cut_off(cut_off, after_swap)
        backups = build_backups(
            settings,
            stores,
            incidents_path,
            telemetry.meter,
            readiness.set,
            after_swap,
            first_start=first_start,
            emergency_cooldown=emergency_cooldown,
        )
        rollbacks = Rollbacks(backups, incident_store, audit) if backups is not None else None
        if backups is not None and rollbacks is not None:  # outcomes the trail could not take,
            backups.told = rollbacks.unwritten  # written once it can; its unrecorded rollbacks
            stack.callback(rollbacks.write_unwritten)
            run_in_background(stack, rollbacks.run_retries(), "rollback-outcomes")

        # The responder runs each protocol's actions on the incidents; after a critical
        # failure, chat answers with short guidance for a while (minimal mode).
        responder = Responder(
            team,
            incident_store,
            isolate_ttl_s=settings.breaker_open_duration_s * 4,
            cooldown_s=settings.responder_cooldown_s,
            auto_rollback=settings.auto_rollback_enabled,
            rollback_allowed=settings.emergency_rollback_enabled,
            on_action=incident_service.on_action,
            minimal_mode=minimal_mode,
            # In a fleet, one replica runs each fleet-wide action of an incident.
            claims=incident_store if isinstance(incident_store, PgIncidentStore) else None,
            replica=fleet.replica if fleet is not None else "",
            emergency_backup=(lambda c: backups.emergency(c.reason))
            if backups is not None
            else None,
            rollback=rollbacks.automatic if rollbacks is not None else None,
            audit=audit,
            read_timeline=incident_store.timeline,
            memory=memory_share,
            keep=keeper.saved,
        )
        incident_service.start(responder if settings.auto_response_enabled else None)
        stack.callback(incident_service.shutdown)
        stack.callback(state_notes.close)  # after the drain's last notes, before the store closes
        stack.push_async_callback(incident_service.drain)
        # On PostgreSQL, again while this replica runs: a replica killed in a rollback, once
        # no longer seen; stopped before the store closes.
        cutting.keep_looking(stack, audit, incident_store, after_swap)
        run_in_background(stack, incident_service.run_auto_resolve(), "resolve")
        if stores.database is not None:
            run_in_background(stack, incident_service.run_counts_refresh(), "incident-counts")
        # Alerts from Alertmanager land on the same incidents.
        alerts = AlertHandler(
            alert_ledger,
            incident_store,
            responder,
            incident_service,
            isolate_ttl_s=settings.alert_isolate_ttl_s,
        )
        stack.push_async_callback(alerts.close)
        run_in_background(stack, alerts.run_replays(), "alert-replays")
        if backups is not None:
            start_backup_jobs(
                stack, backups, stores, fleet.replica if fleet else None, telemetry.meter
            )

        health, memory_check = start_health(
            stack, settings, telemetry, stores, team, incident_service, backups, state, failing
        )
        run_in_background(stack, tick_state(state), "state")

        admission = ChatAdmission(settings.chat_starts_per_turn, settings.chat_queue_limit)
        register_admission_metrics(telemetry.meter, admission)
        chat_service = ChatService(
            MinimalModeGate(team.router, minimal_mode),  # type: ignore[arg-type]
            stores.units,
            system_state=lambda: state.state.value,
            enrich=incident_service.replies.enrich,
            instruments=instruments,
            admission=admission,
        )

        app.state.runtime = Runtime(
            readiness=readiness,
            stores=stores,
            team=team,
            faults=faults,
            audit=audit,
            incident_service=incident_service,
            traces=KeptTraces(trace_keeper),
            state=state,
            state_keeper=keeper,
            backups=backups,
            rollbacks=rollbacks,
            alerts=alerts,
            health=health,
            memory_check=memory_check,
            chat=chat_service,
            minimal_mode=minimal_mode,
        )
        readiness.set(True, None)
        stack.callback(readiness.set, False, "shutting down")
        log.info("ERS ready (env=%s, data in %s)", settings.env, settings.data_dir)
        for line in unknown_variables(os.environ, Settings.model_fields):
            log.warning(line)
        yield
