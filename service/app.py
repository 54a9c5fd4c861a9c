"""The ERS application: construction and the lifespan that wires everything together.

Read the lifespan top to bottom to see how the parts connect: telemetry (built with the
app, because the HTTP instrumentation needs it), state stores, the guarded team of agents,
and the chat service.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

# The HTTP semantic conventions are pinned so metric and attribute names stay stable.
os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "http"

from fastapi import FastAPI  # noqa: E402
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # noqa: E402

from service import http_errors  # noqa: E402
from service.breaker_metrics import BreakerMetrics  # noqa: E402
from service.chat import ChatService  # noqa: E402
from service.faults import FaultInjector  # noqa: E402
from service.instruments import AgentInstruments  # noqa: E402
from service.routes import breakers, chat, faults, probes, profiles  # noqa: E402
from service.runtime import Runtime  # noqa: E402
from service.settings import Settings, load_settings  # noqa: E402
from service.stores import Stores  # noqa: E402
from service.team import breaker_configs, build_team  # noqa: E402
from telemetry.providers import Telemetry, build_telemetry  # noqa: E402

log = logging.getLogger("ers")

UNTRACED_PATHS = "/livez,/readyz,/metrics"


def service_version() -> str:
    try:
        return version("emergency-response")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    breaker_configs(settings)  # an invalid per-agent override stops start-up here, in one line
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
    if settings.fault_injection:
        app.include_router(faults.router)
    app.include_router(probes.router)
    if settings.telemetry_enabled:
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            excluded_urls=UNTRACED_PATHS,
            # One server span per request; the per-message send/receive spans would triple
            # the tracing cost of every chat and say nothing an operator needs.
            exclude_spans=["receive", "send"],
        )
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    telemetry: Telemetry = app.state.telemetry

    # State: one SQLite file per component.
    stores = Stores.in_directory(settings.data_dir)
    stores.open_all()

    # The team: every agent behind its breaker, timeout, retries and fallback.
    instruments = AgentInstruments.create(telemetry.meter) if telemetry.enabled else None
    faults = FaultInjector() if settings.fault_injection else None
    team = build_team(stores, telemetry.tracer, instruments, faults, settings)

    breaker_metrics = BreakerMetrics(telemetry.meter)
    breaker_metrics.attach(team.breakers())

    chat_service = ChatService(team.router, stores.conversations, instruments=instruments)
    runtime = Runtime(
        settings=settings,
        telemetry=telemetry,
        stores=stores,
        team=team,
        chat=chat_service,
        faults=faults,
    )
    app.state.runtime = runtime
    runtime.ready, runtime.not_ready_reason = True, None
    log.info("ERS ready (env=%s, data in %s)", settings.env, settings.data_dir)
    try:
        yield
    finally:
        runtime.ready, runtime.not_ready_reason = False, "shutting down"
        breaker_metrics.detach()
        stores.close_all()
        telemetry.shutdown()
        app.state.runtime = None
