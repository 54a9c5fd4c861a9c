"""The anchor for /chat's telemetry cost: a minimal FastAPI app, one pydantic POST, served by
uvicorn as ERS is served, bare or instrumented as any FastAPI service is.

``python -m bench.anchor_app --port P [--instrumented]``. Instrumented means
``FastAPIInstrumentor.instrument_app`` (the OpenTelemetry ASGI instrumentation) on
``telemetry.build_telemetry``'s providers (ERS's tracer provider, Prometheus reader and no
exemplars), with ERS's untraced paths, no per-message send/receive spans, and only the metric
ERS records too, the request-duration histogram (``bench.skipping_meter``). Bare means the
same app and server without that call. ERS records its HTTP server spans and that histogram
with its own middleware (``service.web.http_telemetry``); the anchor is what the library a
user would pick costs for the same spans and series.

With ``ANCHOR_DATABASE_URL`` in the environment (not on the command line: it holds a
password), each chat also reads one row of a table in that PostgreSQL database
through a psycopg pool (autocommit, as ERS's stores), the statement a chat costs ERS on
average (``bench.fleet``'s anchor for scaling on PostgreSQL).
"""

from __future__ import annotations

import argparse
import os

from fastapi import FastAPI
from pydantic import BaseModel, Field

# Imported first: service.web.app pins the HTTP semantic conventions in the environment before
# the instrumentation is loaded (the names ERS's own spans and series use), and names the URLs
# ERS leaves untraced.
from service.web.app import UNTRACED_PATHS  # isort: skip
from service.cli.main import tune_garbage_collector


class Message(BaseModel):
    message: str = Field(max_length=100_000)
    userId: str = Field("anonymous", min_length=1, max_length=128)


class Reply(BaseModel):
    response: str
    agent: str


def create_app(instrumented: bool, database_url: str | None = None) -> FastAPI:
    pool, lifespan = None, None
    if database_url is not None:
        from contextlib import asynccontextmanager

        from psycopg_pool import AsyncConnectionPool

        from service.stores.postgres import POOL_MAX_SIZE, POOL_MIN_SIZE

        pool = AsyncConnectionPool(
            database_url,
            min_size=POOL_MIN_SIZE,
            max_size=POOL_MAX_SIZE,
            kwargs={"autocommit": True},
            open=False,
        )

        @asynccontextmanager
        async def lifespan(app: FastAPI):  # noqa: ANN202
            await pool.open(wait=True)
            async with pool.connection() as conn:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS anchor_profiles (user_id TEXT PRIMARY KEY, "
                    "body TEXT NOT NULL)"
                )
            yield
            await pool.close()

    app = FastAPI(title="anchor", lifespan=lifespan)

    @app.post("/chat", response_model=Reply)
    async def chat(body: Message) -> Reply:
        if pool is not None:
            async with pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT body FROM anchor_profiles WHERE user_id = %s", (body.userId,)
                )
                await cursor.fetchone()
        return Reply(response=f"{len(body.message)} characters from {body.userId}", agent="echo")

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    if instrumented:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        from bench.skipping_meter import UNUSED_HTTP_METRICS, SkippingMeterProvider
        from telemetry.providers import build_telemetry

        telemetry = build_telemetry("anchor", "0.0.0", enabled=True)
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=SkippingMeterProvider(telemetry.meter_provider, UNUSED_HTTP_METRICS),
            excluded_urls=",".join(sorted(UNTRACED_PATHS)),
            exclude_spans=["receive", "send"],
        )
    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--instrumented", action="store_true")
    args = parser.parse_args()
    config = uvicorn.Config(
        create_app(args.instrumented, os.environ.get("ANCHOR_DATABASE_URL")),
        host="127.0.0.1",
        port=args.port,
        log_level="info",
        access_log=False,
    )
    tune_garbage_collector()  # as `ers serve` does, so the servers differ only in the app
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
