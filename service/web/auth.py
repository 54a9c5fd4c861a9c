"""Bearer-token access for the endpoints that change something, the webhook and the intake.

A configured token is required (constant-time comparison; 401 with ``WWW-Authenticate``).
With a token unset, development and test answer loopback clients only; production refuses.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.routing import APIRoute

from service.settings import Environment, Settings

_KIND_LABEL = {"admin": "ERS_ADMIN_TOKEN", "alert": "ERS_ALERT_TOKEN", "intake": "ERS_INTAKE_TOKEN"}


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host in ("localhost", "testclient"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=message,
        headers={"WWW-Authenticate": 'Bearer realm="ers"'},
    )


def check_token(request: Request, settings: Settings, kind: str) -> str:
    """Return who the caller is; raise 401/403 when the request may not pass."""
    expected = settings.token(kind)
    if expected is None:
        if settings.env is Environment.PRODUCTION:
            raise _unauthorized(f"{_KIND_LABEL[kind]} is not configured on this server")
        client = request.client.host if request.client else None
        if not _is_loopback(client):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"{_KIND_LABEL[kind]} is not set, so this endpoint answers loopback clients"
                " only; set the token to reach it from elsewhere",
            )
        return f"{kind}:loopback"
    sent = request.headers.getlist("authorization")
    if len(sent) > 1:  # which one is the caller's cannot be told
        raise _unauthorized(
            f"the request has {len(sent)} Authorization headers; send one Authorization header"
        )
    header = sent[0] if sent else ""
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise _unauthorized("send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        raise _unauthorized("the bearer token is not valid for this endpoint")
    return f"{kind}:token"


def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def require_admin(request: Request) -> str:
    return check_token(request, _settings(request), "admin")


async def require_alert(request: Request) -> str:
    return check_token(request, _settings(request), "alert")


async def require_intake(request: Request) -> str:
    return check_token(request, _settings(request), "intake")


async def require_admin_read(request: Request) -> str:
    """Reads of /api/emergency/* are open outside production and need the admin token in it."""
    settings = _settings(request)
    if settings.env is Environment.PRODUCTION:
        return check_token(request, settings, "admin")
    return "reader"


TOKEN_CHECKS = (require_admin, require_alert, require_intake, require_admin_read)


async def refused_before_the_body(request: Request) -> HTTPException | None:
    """The 401/403 the route's token check gives this request, None when it passes or the
    route takes no token. FastAPI decodes a JSON body before it runs the dependencies, so
    a body it cannot decode was answered 422 to a caller without the token."""
    route = request.scope.get("route")
    pending = [route.dependant] if isinstance(route, APIRoute) else []
    while pending:
        dependant = pending.pop()
        pending += dependant.dependencies
        if dependant.call in TOKEN_CHECKS:
            try:
                await dependant.call(request)
            except HTTPException as refused:
                return refused
    return None


AdminRead = Depends(require_admin_read)
AdminAuth = Annotated[str, Depends(require_admin)]
AlertAuth = Annotated[str, Depends(require_alert)]
IntakeAuth = Annotated[str, Depends(require_intake)]
