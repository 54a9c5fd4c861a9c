"""Error replies a person can act on: never a stack trace, always the cause and a next step."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from service.chat.admission import ChatOverloaded
from service.errors import StoreUnavailable, UnknownAgent
from service.incidents.model import IncidentStoreUnavailable

log = logging.getLogger("ers.http")


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def describe(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    where = _field(tuple(error.get("loc", ())))
    if kind == "json_invalid":
        reason = error.get("ctx", {}).get("error", "syntax error")
        return f"the request body is not valid JSON ({reason}); check quotes and commas"
    if kind == "missing":
        return f"{where} is required"
    if kind == "extra_forbidden":
        return f"{where} is not a known field; check its spelling"
    if kind == "model_attributes_type":
        return "the request body must be a JSON object"
    return f"{where}: {error.get('msg', 'invalid value')}"


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    problems = [describe(e) for e in errors[:10]]
    return JSONResponse(
        {"error": "invalid request", "detail": "; ".join(problems), "problems": problems},
        status_code=422,
    )


async def incident_store_unavailable(
    request: Request, exc: IncidentStoreUnavailable
) -> JSONResponse:
    log.warning("%s", exc)
    return JSONResponse(
        {
            "error": "state store unavailable",
            "detail": "the incidents store cannot be used right now; try again shortly",
            "component": "incidents",
        },
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
    log.warning("store unavailable: %s", exc)
    return JSONResponse(
        {
            "error": "state store unavailable",
            "detail": f"the {exc.component} store cannot be used right now; try again shortly",
            "component": exc.component,
        },
        status_code=503,
        headers={"Retry-After": "5"},
    )


async def chat_overloaded(request: Request, exc: ChatOverloaded) -> JSONResponse:
    return JSONResponse(
        {"error": "overloaded", "detail": str(exc)},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def unknown_agent(request: Request, exc: UnknownAgent) -> JSONResponse:
    return JSONResponse({"error": "not found", "detail": str(exc)}, status_code=404)


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return JSONResponse(
        {
            "error": "internal error",
            "detail": f"the server failed with {type(exc).__name__}; it is still running, "
            "so try again, and report it if it repeats",
        },
        status_code=500,
    )


class ErrorBody(BaseModel):
    """Every error reply: ``detail`` says what went wrong and what to do."""

    detail: str
    error: str | None = None
    problems: list[str] | None = None
    component: str | None = None


def _openapi_with_error_bodies(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI documents 422 replies as its own list of errors; ERS answers with ErrorBody."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas["HTTPValidationError"] = ErrorBody.model_json_schema()
            schemas.pop("ValidationError", None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
    # The client (or the body-size limit, which has already answered) ended the request;
    # nobody is left to read a reply.
    return Response(status_code=400)


def install(app: FastAPI) -> None:
    app.openapi = _openapi_with_error_bodies(app)  # type: ignore[method-assign]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StoreUnavailable, store_unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(
        IncidentStoreUnavailable,
        incident_store_unavailable,  # type: ignore[arg-type]
    )
    app.add_exception_handler(UnknownAgent, unknown_agent)  # type: ignore[arg-type]
    app.add_exception_handler(ChatOverloaded, chat_overloaded)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnect, client_gone)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected)
