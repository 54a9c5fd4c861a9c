"""Error replies a person can act on: never a stack trace, always the cause and a next step."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from opentelemetry import trace
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from service.chat.admission import ChatOverloaded
from service.errors import (
    NO_ROUTE,
    CommitUnknown,
    StoreDamaged,
    StorePaused,
    StoreUnavailable,
    UnknownAgent,
    cut_short,
)
from service.incidents.model import INCIDENT_ID_PATTERN, TRACE_ID_PATTERN, IncidentStoreUnavailable
from service.web.auth import refused_before_the_body
from service.web.json_route import REFUSED_AS_SENT
from service.web.routes.chat import USER_ID_PATTERN
from service.web.routes.json_types import json_kind
from telemetry.classifier import NOT_AN_INCIDENT
from telemetry.exception_events import record_failure

log = logging.getLogger("ers.http")


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


# Pydantic's words for a value of the wrong type, as a person would put them.
_MUST_BE = {
    "float_parsing": "a number",
    "float_type": "a number",
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
}


# What a value of each pattern the routes check looks like, and where a person finds one.
_LOOKS_LIKE = {
    INCIDENT_ID_PATTERN: "an incident id like INC_1796294115000_ab12cd (see `ers incidents list`)",
    TRACE_ID_PATTERN: "a trace id of 32 lowercase hex characters (a chat reply's traceId)",
    USER_ID_PATTERN: "a user id: ASCII letters, digits and _ . @ : - only",
}


def describe(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    loc = tuple(error.get("loc", ()))
    where = _field(loc)
    if kind == "json_invalid":
        reason = error.get("ctx", {}).get("error", "syntax error")
        if reason.startswith(REFUSED_AS_SENT):
            return reason
        at = f" at character {loc[1]}" if len(loc) > 1 and isinstance(loc[1], int) else ""
        return f"the request body is not valid JSON ({reason}{at}); check quotes and commas"
    if kind.startswith(("datetime_", "date_")):
        why = error.get("ctx", {}).get("error")
        return (
            f"{where}: must be a time in ISO 8601, such as 2026-12-03T07:30:00Z or 2026-12-03"
            + (f" ({why})" if why else "")
        )
    if kind in _MUST_BE:
        # A query value is always text; a body value's JSON kind says what was sent instead.
        sent = f", not {json_kind(error.get('input'))}" if loc[:1] == ("body",) else ""
        return f"{where}: must be {_MUST_BE[kind]}{sent}"
    if kind == "missing":
        return f"{where} is required"
    if kind == "extra_forbidden":
        return f"{where} is not a known field; check its spelling"
    if kind == "model_attributes_type":
        if isinstance(error.get("input"), str | bytes):
            # FastAPI reads a body as JSON only when its Content-Type says so; curl -d sends
            # application/x-www-form-urlencoded unless told otherwise, and the body stays text.
            return (
                "the request body must be a JSON object, sent with the header "
                "Content-Type: application/json"
            )
        return "the request body must be a JSON object"
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        shape = _LOOKS_LIKE.get(pattern, f"a value matching {pattern}")
        return f"{where}: {str(error.get('input'))[:80]!r} is not {shape}"
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    # A check of the whole body (a model validator) names no field.
    return message if where == "body" and kind == "value_error" else f"{where}: {message}"


def invalid_request(problems: list[str]) -> JSONResponse:
    return JSONResponse(
        {"error": "invalid request", "detail": "; ".join(problems), "problems": problems},
        status_code=422,
    )


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    undecoded = any(e.get("type") == "json_invalid" for e in exc.errors())
    if undecoded and (refused := await refused_before_the_body(request)) is not None:
        return await http_error(request, refused)
    return invalid_request([describe(e) for e in exc.errors()[:10]])


def unreadable_body(exc: StarletteHTTPException) -> str | None:
    """What made FastAPI give up on a JSON body it could not decode, in words; None when
    ``exc`` is not such a failure. FastAPI answers these with a bare 400; they are invalid
    requests like any other, so they get the 422 that names the problem."""
    if exc.status_code != 400:
        return None
    cause = exc.__cause__
    if isinstance(cause, RecursionError):
        return (
            "the request body nests arrays or objects too deeply to read (more than about "
            "a thousand levels); send a flatter JSON document"
        )
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start]
        return (
            f"the request body is not valid UTF-8 (byte 0x{byte:02x} at offset {cause.start}); "
            "send the JSON as UTF-8 text"
        )
    return None


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    problem = unreadable_body(exc)
    if problem is not None:
        if (refused := await refused_before_the_body(request)) is not None:
            return await http_error(request, refused)
        return invalid_request([problem])
    if exc.status_code == 422 and isinstance(exc.detail, str):
        # A route's own check: the shape of the body's validation errors, for one reader.
        return invalid_request([exc.detail])
    try:
        error = HTTPStatus(exc.status_code).phrase.lower()
    except ValueError:
        error = None
    if error is None or not exc.status_code >= 400 or not isinstance(exc.detail, str):
        return await http_exception_handler(request, exc)
    detail = exc.detail
    # The router's own answers name neither the path nor the way out. (The path as sent,
    # cut short: it is the client's own, and may be as long as a request line allows.)
    path = cut_short(request.url.path)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"{NO_ROUTE} {path}: check the path (/docs lists the routes)"
    elif exc.status_code == 405 and detail == "Method Not Allowed":
        # The router names the methods of the first route the path matched; a path served
        # by several (GET and PUT /api/profiles/{userId}) takes each of theirs.
        if allowed := _methods_of(request):
            exc.headers = {**(exc.headers or {}), "Allow": allowed}
        detail = f"{path} does not take {request.method}: use {allowed or 'another method'}"
    # The shape of every other error reply: what kind of refusal, then what to do.
    body = {"error": error, "detail": detail}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _methods_of(request: Request) -> str:
    """Every method the request's path is served with, as an Allow header lists them."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


def _trace_of(span: trace.Span) -> dict[str, str]:
    """The request's trace id, for a reply whose failure is recorded on its trace (kept, so
    `ers trace` shows it), as a chat's 200 carries it; none when the request is untraced."""
    context = span.get_span_context()
    return {"traceId": format(context.trace_id, "032x")} if context.is_valid else {}


async def incident_store_unavailable(
    request: Request, exc: IncidentStoreUnavailable
) -> JSONResponse:
    log.warning("%s", exc)
    # The store's failure in its own words is the incident, as for the other stores: a
    # bare "HTTP 503" of the route said nothing of what failed.
    span = trace.get_current_span()
    span.set_attribute("ers.component", "incidents")
    record_failure(span, exc)
    _stores_check_soon(request)
    return JSONResponse(
        {
            "error": "state store unavailable",
            "detail": "the incidents store cannot be used right now; try again shortly",
            "component": "incidents",
            **_trace_of(span),
        },
        status_code=503,
        headers={"Retry-After": "5"},
    )


def _stores_check_soon(request: Request) -> None:
    """A store failed a request: the health report, and the status and system state that
    read it, learn it now rather than at the end of the checks' interval."""
    runtime = getattr(getattr(request.scope.get("app"), "state", None), "runtime", None)
    if runtime is not None:
        runtime.health.check_soon("stores")


async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
    log.warning("store unavailable: %s", exc)
    paused = isinstance(exc, StorePaused)  # for a moment: a rollback swaps its state
    span = trace.get_current_span()
    if paused:  # the operator's rollback, not an outage
        span.set_attribute(NOT_AN_INCIDENT, "a store paused for a rollback")
    else:  # the store's failure in its own words, not a bare 503, is the incident
        span.set_attribute("ers.component", exc.components[0])
        record_failure(span, exc)
        _stores_check_soon(request)
    verb = "are" if exc.several else "is"
    detail = f"{exc.stores} cannot be used right now; try again shortly"
    if isinstance(exc, StoreDamaged):  # trying again only fails again
        detail = (
            f"{exc.stores} {verb} damaged ({exc.reason}): sending this again will not help; "
            "ERS's operator rolls it back (ers backup rollback ID --components "
            f"{' '.join(exc.components)})"
        )
    elif isinstance(exc, CommitUnknown):
        # Its expense may be stored: "try again" would ask for it twice.
        detail = (
            "the connection to the database was lost as this request's writes were being "
            "committed, and whether they were stored cannot be read yet: sent again with "
            "the same Idempotency-Key it gets the first reply if they were; without a key, "
            "read the budget report before sending it again"
        )
    return JSONResponse(
        {
            "error": "state store unavailable",
            "detail": f"{exc.stores} {verb} paused: {exc.reason}" if paused else detail,
            # A component's name, as a script reads it; every one of a turn's in components.
            "component": exc.components[0],
            "components": exc.components,
            **({} if paused else _trace_of(span)),
        },
        status_code=503,
        # No retry is asked of a damaged file's caller: it would only fail again.
        headers={} if isinstance(exc, StoreDamaged) else {"Retry-After": "1" if paused else "5"},
    )


async def chat_overloaded(request: Request, exc: ChatOverloaded) -> JSONResponse:
    # Shedding is the queue's limit at work, counted (ers_chat_requests_total{outcome="shed"})
    # and alerted on through the SLO: an incident per shed chat would say nothing more.
    trace.get_current_span().set_attribute(NOT_AN_INCIDENT, "shed by chat_queue_limit")
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
    traceId: str | None = None  # a failure recorded on the request's trace: `ers trace` it


async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
    # The client (or the body-size limit, which has already answered) ended the request;
    # nobody is left to read a reply.
    return Response(status_code=400)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(StoreUnavailable, store_unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(
        IncidentStoreUnavailable,
        incident_store_unavailable,  # type: ignore[arg-type]
    )
    app.add_exception_handler(UnknownAgent, unknown_agent)  # type: ignore[arg-type]
    app.add_exception_handler(ChatOverloaded, chat_overloaded)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnect, client_gone)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected)
