"""The anchor for /chat's telemetry cost: a minimal FastAPI app, one pydantic POST, served by
uvicorn as ERS is served, bare or instrumented exactly as ERS instruments itself.

``python -m bench.anchor_app --port P [--instrumented]``. Instrumented means what
``service.web.app.create_app`` does with telemetry on: ``telemetry.build_telemetry`` (the same
providers, Prometheus reader and no exemplars) and ``FastAPIInstrumentor.instrument_app``
with the same tracer and HTTP meter provider, excluded URLs and excluded spans. Bare means
the same app and server without that call. What ERS costs beyond this anchor is its own.
"""

from __future__ import annotations

import argparse

from fastapi import FastAPI
from pydantic import BaseModel, Field

# Imported first: service.web.app pins the HTTP semantic conventions in the environment before
# the instrumentation is loaded, and names the URLs ERS leaves untraced.
from service.web.app import UNTRACED_PATHS  # isort: skip
from service.cli.main import tune_garbage_collector


class Message(BaseModel):
    message: str = Field(max_length=100_000)
    userId: str = Field("anonymous", min_length=1, max_length=128)


class Reply(BaseModel):
    response: str
    agent: str


def create_app(instrumented: bool) -> FastAPI:
    app = FastAPI(title="anchor")

    @app.post("/chat", response_model=Reply)
    async def chat(body: Message) -> Reply:
        return Reply(response=f"{len(body.message)} characters from {body.userId}", agent="echo")

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    if instrumented:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        from telemetry.providers import build_telemetry

        telemetry = build_telemetry("anchor", "0.0.0", enabled=True)
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.http_meter_provider,
            excluded_urls=UNTRACED_PATHS,
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
        create_app(args.instrumented),
        host="127.0.0.1",
        port=args.port,
        log_level="info",
        access_log=False,
    )
    tune_garbage_collector()  # as `ers serve` does, so the servers differ only in the app
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
