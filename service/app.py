"""The ERS application: construction and the lifespan that wires everything together.

Read the lifespan top to bottom to see how the parts connect: telemetry (built with the
app, because the HTTP instrumentation needs it), state stores, the guarded team of agents,
and the chat service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

# The HTTP semantic conventions are pinned so metric and attribute names stay stable.
os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "http"

from fastapi import FastAPI  # noqa: E402
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # noqa: E402

from service import http_errors  # noqa: E402
from service.admission import ChatAdmission, register_admission_metrics  # noqa: E402
from service.alerting.handler import AlertHandler  # noqa: E402
from service.audit import AuditLog  # noqa: E402
from service.backup_jobs import run_refresh, run_schedule  # noqa: E402
from service.backup_metrics import BackupMetrics  # noqa: E402
from service.backups import BackupService, finds_no_state  # noqa: E402
from service.body_limit import BodySizeLimit  # noqa: E402
from service.breaker_metrics import BreakerMetrics  # noqa: E402
from service.chat import ChatService  # noqa: E402
from service.datadir_lock import hold_state  # noqa: E402
from service.faults import FaultInjector  # noqa: E402
from service.fleet import FleetLeader, FleetOverrides  # noqa: E402
from service.health.backup_checks import (  # noqa: E402
    BackupAgeCheck,
    RepositoryCheck,
    RestoreDrillCheck,
)
from service.health.checks import (  # noqa: E402
    BreakersCheck,
    DiskCheck,
    EventLoopCheck,
    IncidentsCheck,
    LoopLagMonitor,
    MemoryCheck,
    StoresCheck,
)
from service.health.incidents import HealthIncidents  # noqa: E402
from service.health.metrics import register_health_metrics  # noqa: E402
from service.health.monitor import HealthMonitor  # noqa: E402
from service.health.system_state import (  # noqa: E402
    StateInputs,
    SystemStateMachine,
)
from service.incidents import IncidentService, open_incident_state  # noqa: E402
from service.instruments import AgentInstruments  # noqa: E402
from service.minimal_mode import MinimalMode, MinimalModeGate  # noqa: E402
from service.resilience.breaker_events import BreakerEventKind  # noqa: E402
from service.resilience.state_keeper import StateKeeper  # noqa: E402
from service.responder import Responder  # noqa: E402
from service.routes import (  # noqa: E402
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
from service.routes import backups as backup_routes  # noqa: E402
from service.runtime import Runtime  # noqa: E402
from service.settings import (  # noqa: E402
    Settings,
    SettingsError,
    check_production,
    load_settings,
)
from service.stores import Stores  # noqa: E402
from service.system_test import (  # noqa: E402
    Step,
    agent_steps,
    incident_step,
    repository_step,
    store_steps,
)
from service.team import breaker_configs, build_team  # noqa: E402
from service.wiring import (  # noqa: E402
    KeptTraces,
    agent_is_healthy,
    breaker_states,
    failing_subsystems,
    note_state_change,
    rollback_before,
    tick_state,
)
from telemetry.classifier import RulesError, load_rules  # noqa: E402
from telemetry.incident_pg import PgIncidentStore  # noqa: E402
from telemetry.providers import Telemetry, build_telemetry  # noqa: E402
from telemetry.trace_archive import TraceArchive  # noqa: E402
from telemetry.trace_keeper import TraceKeeper  # noqa: E402

log = logging.getLogger("ers")

UNTRACED_PATHS = "/livez,/readyz,/metrics"


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
    if settings.telemetry_enabled:
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.http_meter_provider,
            excluded_urls=UNTRACED_PATHS,
            # One server span per request; the per-message send/receive spans would triple
            # the tracing cost of every chat and say nothing an operator needs.
            exclude_spans=["receive", "send"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The state is this service's from before anything opens it until after all is closed:
    # a second service, or an offline rollback, would change files under the open stores.
    async with hold_state(app.state.settings), _lifespan(app):
        yield


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    telemetry: Telemetry = app.state.telemetry

    # Only a start that finds no state at all may create the backup repository by itself.
    first_start = await asyncio.to_thread(finds_no_state, settings.data_dir)
    # State: one SQLite file per component, or one PostgreSQL schema each.
    stores = Stores.from_settings(settings)
    await stores.open()

    # The team: every agent behind its breaker, timeout, retries and fallback.
    instruments = AgentInstruments.create(telemetry.meter) if telemetry.enabled else None
    faults = FaultInjector() if settings.fault_injection else None
    team = build_team(stores, telemetry.tracer, instruments, faults, settings)

    breaker_metrics = BreakerMetrics(telemetry.meter)
    breaker_metrics.attach(team.breakers())

    # Fleet: on PostgreSQL, a breaker forced open (or released) here is forced open (or
    # released) in every replica, and theirs here; nothing changes on SQLite.
    fleet = FleetOverrides.from_settings(settings, stores, team.breakers())
    if fleet is not None:
        await fleet.start()
    # ... and scheduled backups, retention, prune, check and drills run on one replica: the
    # schedule starts the lock's holder once the repository answers.
    leader: FleetLeader | None = None
    if (
        fleet is not None
        and stores.database is not None
        and settings.database_url is not None
        and settings.backups_enabled
        and settings.backup_schedule_enabled
    ):
        leader = FleetLeader(
            stores.database, settings.database_url.get_secret_value(), replica=fleet.replica
        )

    # Health: checks run every interval and on demand; the system state follows them, the
    # breakers and the incidents.
    lag_monitor = LoopLagMonitor()
    memory_check = MemoryCheck()
    health = HealthMonitor(
        [
            memory_check,
            EventLoopCheck(lag_monitor),
            StoresCheck(stores.by_component()),
            DiskCheck(settings.data_dir),
            BreakersCheck(lambda: breaker_states(team)),
        ],
        telemetry.tracer,
        interval_s=settings.health_check_interval_s,
    )
    runtime_ref: list[Runtime] = []
    state = SystemStateMachine(
        StateInputs(
            breaker_states=lambda: breaker_states(team),
            active_incidents=lambda: runtime_ref[0].active_incidents(),
            failing_subsystems=lambda: failing_subsystems(health),
        ),
        recovery_clean_s=settings.recovery_clean_s,
    )
    health.subscribe(lambda report: state.evaluate())
    for breaker in team.breakers():
        breaker.subscribe(lambda event: state.evaluate(), [BreakerEventKind.STATE_TRANSITION])
    register_health_metrics(telemetry.meter, state, health, memory_check, time.time())
    # Isolations (forced opens, disabled breakers) and the system state outlive a restart:
    # kept in system_state and put back here, after the fleet's own forced opens.
    keeper = StateKeeper(stores.system_state, team.breakers(), state)
    await keeper.start()

    admission = ChatAdmission(settings.chat_starts_per_turn, settings.chat_queue_limit)
    register_admission_metrics(telemetry.meter, admission)
    # After a critical failure, chat answers with short guidance for a while (the responder).
    minimal_mode = MinimalMode()
    chat_service = ChatService(
        MinimalModeGate(team.router, minimal_mode),  # type: ignore[arg-type]
        stores.units,
        system_state=lambda: state.state.value,
        instruments=instruments,
        admission=admission,
    )
    runtime = Runtime(
        settings=settings,
        telemetry=telemetry,
        stores=stores,
        team=team,
        chat=chat_service,
        faults=faults,
        health=health,
        state=state,
        memory_check=memory_check,
        system_test_steps=lambda: system_test_steps(runtime),
        state_keeper=keeper,
    )
    runtime_ref.append(runtime)

    def system_test_steps(runtime: Runtime) -> list[Step]:
        steps = agent_steps(team) + store_steps(stores)
        if runtime.backups is not None:
            steps += repository_step(runtime.backups)
        if runtime.incident_service is not None:
            steps += incident_step(runtime.incident_service, telemetry.tracer)
        return steps

    # Audit trail and backups: the incidents file holds the audit trail and is backed up,
    # never rolled back.
    incidents_path = settings.data_dir / "incidents.sqlite3"
    runtime.audit = AuditLog(incidents_path)
    background: list[asyncio.Task[None]] = []

    # Incidents: error spans are classified and grouped off the request path; the responder
    # runs each protocol's actions; alerts from Alertmanager land on the same incidents.
    incident_store, alert_ledger = await open_incident_state(
        settings,
        incidents_path,
        stores.database,
        is_component_healthy=lambda name: agent_is_healthy(team, name),
    )
    incident_service = IncidentService(
        incident_store,
        telemetry.meter,
        rules_path=settings.classification_rules,
        cache_active_counts=stores.database is not None,
    )
    telemetry.add_span_processor(incident_service.processor)
    # Kept traces also go to a bounded file, so incident trace links outlive a restart.
    trace_keeper = TraceKeeper(archive=TraceArchive(settings.data_dir / "kept-traces.sqlite3"))
    telemetry.add_span_processor(trace_keeper)
    runtime.traces = KeptTraces(trace_keeper)
    responder = Responder(
        team,
        incident_service.store,
        isolate_ttl_s=settings.breaker_open_duration_s * 4,
        cooldown_s=settings.responder_cooldown_s,
        auto_rollback=settings.auto_rollback_enabled,
        on_action=lambda protocol, action, result: incident_service.actions.add(
            1, {"protocol": protocol, "action": action, "result": result}
        ),
        minimal_mode=minimal_mode,
        # In a fleet, one replica runs each fleet-wide action of an incident.
        claims=incident_store if isinstance(incident_store, PgIncidentStore) else None,
        replica=fleet.replica if fleet is not None else "",
    )
    incident_service.start(responder if settings.auto_response_enabled else None)
    incident_service.subscribe(lambda event: state.evaluate())
    runtime.incident_service = incident_service
    runtime.incidents = incident_service.store
    runtime.active_incidents = incident_service.active_counts
    runtime.incidents_by_severity = lambda hours: incident_service.store.counts_by_severity(
        time.time() - hours * 3600
    )
    chat_service.enrich = incident_service.enrich
    health.add_check(IncidentsCheck(incident_service.active_counts))
    health_incidents = HealthIncidents(
        incident_service.store, settings.health_incident_resolve_after_s
    )
    health.subscribe(health_incidents.on_report)
    state.subscribe(lambda t: note_state_change(incident_service, t))
    runtime.alerts = AlertHandler(
        alert_ledger,
        incident_service.store,
        responder,
        isolate_ttl_s=settings.alert_isolate_ttl_s,
    )
    background.append(asyncio.create_task(incident_service.run_auto_resolve(), name="resolve"))
    if stores.database is not None:
        background.append(
            asyncio.create_task(incident_service.run_counts_refresh(), name="incident-counts")
        )
    if settings.backups_enabled:
        backups = BackupService(
            settings,
            stores,
            incidents_path,
            runtime.set_ready,
            restored_with={"system_state": keeper.restored_lines},
            first_start=first_start,
        )
        backup_metrics = BackupMetrics(
            telemetry.meter,
            backups.last_success,
            backups.intervals_s,
            lambda: len(backups.manager.list()) if backups.manager else 0,
            drill_interval_s=settings.restore_drill_interval_minutes * 60,
        )
        backups.subscribe(backup_metrics.on_event)
        runtime.backups = backups
        runtime.backups_summary = backups.summary
        for check in (
            RepositoryCheck(backups),
            BackupAgeCheck(backups),
            RestoreDrillCheck(backups),
        ):
            health.add_check(check)
        responder.emergency_backup = lambda context: backups.emergency(context.reason)
        responder.rollback = lambda context: rollback_before(runtime, backups, context)
        background.append(asyncio.create_task(backups.connect(), name="backups-connect"))
        background.append(asyncio.create_task(run_refresh(backups), name="backups-refresh"))
        if settings.backup_schedule_enabled:
            background.append(
                asyncio.create_task(run_schedule(backups, leader=leader), name="backups")
            )

    app.state.runtime = runtime
    lag_monitor.start()
    health.start()
    state_ticker = asyncio.get_running_loop().create_task(tick_state(state), name="state")
    runtime.ready, runtime.not_ready_reason = True, None
    log.info("ERS ready (env=%s, data in %s)", settings.env, settings.data_dir)
    try:
        yield
    finally:
        runtime.ready, runtime.not_ready_reason = False, "shutting down"
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        # In a fleet the state outlives this replica: the jobs' runner backs it up.
        if runtime.backups is not None and (leader is None or leader.is_leader):
            await runtime.backups.shutdown_backup()
        if leader is not None:
            await leader.stop()
        await runtime.alerts.drain()
        alert_ledger.close()
        await health_incidents.drain()
        await incident_service.drain()
        incident_service.shutdown()
        runtime.audit.close()
        state_ticker.cancel()
        await health.stop()
        await lag_monitor.stop()
        await keeper.stop()
        breaker_metrics.detach()
        if fleet is not None:
            await fleet.stop()
        await stores.close()
        telemetry.shutdown()
        app.state.runtime = None
