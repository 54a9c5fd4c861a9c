"""The OpenAPI document as this service answers: every error status an operation can return,
the bearer tokens it takes, and the limits it enforces.

Statuses that come from a route's own checks are declared on the route with ``errors(...)``.
Those that come from what a route depends on are added here, once, from the dependency
itself: 401/403 from the token checks in ``auth``, 503 from the lifespan's runtime (missing
while the service starts or stops, and the home of the stores that may be unavailable),
413 from the body-size limit, on every POST, PUT and PATCH (it answers any request whose
body is over the limit, before a route is chosen).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from service.settings import Environment, Settings
from service.web import auth
from service.web.deps import get_runtime
from service.web.http_errors import ErrorBody

DESCRIPTIONS: dict[int, str] = {
    400: "the request cannot be carried out as sent; the detail says what to change",
    404: "not found; the detail names what was looked for",
    409: "refused in the current state; the detail says why and what to do",
    415: "the body's content type is not one this endpoint reads",
    422: "invalid request: the detail names each problem (malformed or too deeply nested "
    "JSON, a wrong type, a value out of range, an unknown field)",
    503: "the service is starting or stopping, or a part this needs is unavailable; "
    "try again shortly (after Retry-After, when the reply has one)",
}

# The token each check asks for, by the security scheme that documents it.
SCHEMES: dict[str, tuple[str, str]] = {
    "admin": ("adminToken", "ERS_ADMIN_TOKEN"),
    "alert": ("alertToken", "ERS_ALERT_TOKEN"),
    "intake": ("intakeToken", "ERS_INTAKE_TOKEN"),
}
_CHECKS: dict[Callable[..., Any], str] = {
    auth.require_admin: "admin",
    auth.require_alert: "alert",
    auth.require_intake: "intake",
}
_BODY_METHODS = {"POST", "PUT", "PATCH"}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for the error statuses a route raises itself, each with ErrorBody."""
    return {s: {"model": ErrorBody, "description": DESCRIPTIONS[s]} for s in statuses}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _calls(dependency)


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }


def _token_rules(
    calls: set[Callable[..., Any]], settings: Settings
) -> tuple[list[dict[str, list[str]]], dict[int, str]]:
    """The ``security`` of an operation under these settings, and the statuses its token
    checks answer under any settings (each description says when)."""
    production = settings.env is Environment.PRODUCTION
    security: list[dict[str, list[str]]] = []
    statuses: dict[int, str] = {}
    anonymous = False
    for call, kind in _CHECKS.items():
        if call not in calls:
            continue
        scheme, variable = SCHEMES[kind]
        security.append({scheme: []})
        statuses[401] = f"no valid token: send 'Authorization: Bearer <{variable}>'"
        statuses[403] = (
            f"outside production, with {variable} unset: only loopback clients are answered"
        )
        # Outside production, with the token unset, loopback clients need none.
        anonymous = anonymous or (not production and settings.token(kind) is None)
    if auth.require_admin_read in calls and not security:
        scheme, variable = SCHEMES["admin"]
        statuses[401] = f"in production, reads take the admin token: send 'Bearer <{variable}>'"
        if production:
            security.append({scheme: []})
    if anonymous:
        security.append({})
    return security, statuses


def _declare(
    route: RouteContext, method: str, operation: dict[str, Any], settings: Settings
) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})

    def add(status: int, description: str) -> None:
        responses.setdefault(str(status), _error(description))

    calls = set(_calls(route.dependant))
    security, auth_statuses = _token_rules(calls, settings)
    if security:
        operation["security"] = security
    for status, description in auth_statuses.items():
        add(status, description)
    if get_runtime in calls:
        add(503, DESCRIPTIONS[503])
    if method in _BODY_METHODS:
        add(413, f"the request body is over {settings.max_body_bytes} bytes")
    if "422" in responses:
        # FastAPI documents its own list of validation errors; ERS answers with ErrorBody.
        responses["422"] = _error(DESCRIPTIONS[422])
    operation["responses"] = dict(sorted(responses.items()))


def document(app: FastAPI, settings: Settings) -> Callable[[], dict[str, Any]]:
    """``app.openapi``: FastAPI's document, completed as the module docstring says."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas["ErrorBody"] = ErrorBody.model_json_schema()
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        components["securitySchemes"] = {
            scheme: {
                "type": "http",
                "scheme": "bearer",
                "description": f"the value of {variable}",
            }
            for scheme, variable in SCHEMES.values()
        }
        # Routers are included lazily: their routes, with the prefixes and dependencies of
        # the inclusion, are reached through route contexts.
        for route in iter_route_contexts(app.routes):
            if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
                continue
            for method in route.methods:
                operation = schema["paths"][route.path_format].get(method.lower())
                if operation is None:
                    continue
                _declare(route, method, operation, settings)
        # The chat route checks a message against the configured limit, so that its reply
        # can say what to do: the document shows that limit.
        message = schemas["ChatRequest"]["properties"]["message"]
        message["maxLength"] = settings.max_message_chars
        app.openapi_schema = schema
        return schema

    return openapi
