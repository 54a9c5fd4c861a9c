"""POST /api/emergency/alerts: Alertmanager's webhook (version 4 payloads)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status

from service.incidents.alert_payload import WebhookPayload
from service.incidents.ledger import LedgerUnavailable
from service.web.auth import AlertAuth
from service.web.deps import Alerts
from service.web.json_route import JsonRoute

router = APIRouter(route_class=JsonRoute, prefix="/api/emergency", tags=["alerts"])


@router.post("/alerts")
async def receive_alerts(payload: WebhookPayload, who: AlertAuth, alerts: Alerts) -> Any:
    try:
        return await alerts.receive(payload)
    except LedgerUnavailable as exc:
        # A 5xx makes Alertmanager retry: the alert is not lost.
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
