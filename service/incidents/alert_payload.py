"""Alertmanager's webhook payload, version 4, validated; the vocabulary of its labels (the
actions, the severities), and an alert as the failure its incident is opened with."""

from __future__ import annotations

import secrets
import time
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.agents.base import canonical_agent_name
from service.settings import COMPONENTS
from telemetry.classifier import Classification
from telemetry.span_record import NAME_LIMIT, SpanRecord

# The rule an alert's incident is classified by: its labels, not the classification rules.
ALERT_RULE = "alertmanager"


def _encodable(value: dict[str, str], longest: int = 4096) -> dict[str, str]:
    """Label names and values must be text that can be stored: no lone surrogates, and no
    longer than ``longest`` characters (a label becomes an incident's component, a column
    of every list)."""
    for key, item in value.items():
        for text in (key, item):
            if len(text) > longest:
                raise ValueError(
                    f"{key[:40]!r} is {len(text)} characters long; at most {longest} here"
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"label {key!r} holds text that is not valid Unicode") from None
    return value


# The labels an incident is named and found by (its component, its fingerprint, indexed):
# no longer than a span's names are kept.
NAMING_LABELS = ("alertname", "agent", "component", "type", "action", "severity")


def _naming(value: dict[str, str]) -> dict[str, str]:
    for key in NAMING_LABELS:
        if len(value.get(key, "")) > NAME_LIMIT:
            raise ValueError(
                f"label {key!r} is {len(value[key])} characters long; at most {NAME_LIMIT}"
            )
    return value


LabelMap = Annotated[dict[str, str], AfterValidator(_encodable), AfterValidator(_naming)]
# An annotation (a description, a runbook's URL) may be longer than a label.
AnnotationMap = Annotated[dict[str, str], AfterValidator(lambda v: _encodable(v, 65_536))]


def _in_utc(moment: datetime) -> datetime:
    """One spelling per instant (the ledger's key): ``12:25+01:00`` is ``11:25Z``, and a time
    without an offset is UTC, as Alertmanager's are."""
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:30:00+01:00 is before the first day there is
        raise ValueError("is out of the range of times in UTC") from None


Moment = Annotated[datetime, AfterValidator(_in_utc)]


class Alert(BaseModel):
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: LabelMap = Field(max_length=64)
    annotations: AnnotationMap = Field(default_factory=dict, max_length=64)
    startsAt: Moment
    endsAt: Moment | None = None
    generatorURL: str = Field("", max_length=2048)
    fingerprint: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-zA-Z]+$")

    @property
    def name(self) -> str:
        return plain_line(self.labels.get("alertname", "unnamed"))

    @property
    def action(self) -> str | None:
        action = self.labels.get("action")
        return None if action in (None, "", "none") else action

    @property
    def target(self) -> str | None:
        """The agent or component the alert is about; an agent by its name, not its alias
        (``agent="WPA"`` is the workout agent), so its incident and breaker are the agent's."""
        agent = self.labels.get("agent")
        return canonical_agent_name(agent) if agent else self.labels.get("component")

    @property
    def acts_on(self) -> str:
        """What its action acts on ("ers": all of it): a rollback's, the component of the
        state it names, even beside an `agent` label (an agent holds no state of its own)."""
        if self.action == "rollback":
            return self.labels.get("component") or self.target or "ers"
        return self.target or "ers"

    def describe(self) -> str:
        """The alert in one line of plain text: its words become a forced open's reason and
        an incident's message, shown in table rows; an annotation often holds several lines,
        and may hold escape sequences or bidirectional overrides that reorder what is read."""
        summary = self.annotations.get("summary") or self.annotations.get("description") or ""
        return plain_line(f"{self.name}: {summary}")[:300].strip(": ")


# In an alert's words, a control character (a line break, an escape) reads as a space and a
# format character (a bidirectional override, a zero-width one) is dropped.
_PLAIN = {"Cc": " ", "Cf": ""}


def plain_line(text: str) -> str:
    """``text`` as one line of plain text (see _PLAIN), its runs of spaces made one."""
    return " ".join("".join(_PLAIN.get(unicodedata.category(c), c) for c in text).split())


class WebhookPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    groupKey: str = Field(max_length=4096)
    truncatedAlerts: int = Field(0, ge=0, le=10**9, strict=True)
    status: Literal["firing", "resolved"]
    receiver: str = Field(max_length=256)
    groupLabels: LabelMap = Field(default_factory=dict)
    commonLabels: LabelMap = Field(default_factory=dict)
    commonAnnotations: AnnotationMap = Field(default_factory=dict)
    externalURL: str = Field("", max_length=2048)
    alerts: list[Alert] = Field(min_length=1, max_length=1000)


# The responder's action an alert's `action` label names, and the type of incident it is.
ACTIONS = {
    "isolate": "isolate",
    "backup": "emergency_backup",
    "rollback": "rollback",
    "cleanup": "trim_caches",
}
ACTION_TYPES = {"isolate": "agent", "backup": "system", "rollback": "system", "cleanup": "resource"}
# Alertmanager's severities, as an incident's.
SEVERITIES = {"critical": "critical", "page": "critical", "warning": "medium", "ticket": "medium"}


def incident_severity(alert: Alert) -> str:
    """The severity of the incident an alert opens, from its ``severity`` label."""
    return SEVERITIES.get(alert.labels.get("severity", ""), "medium")


def rollback_refusal(component: str) -> str | None:
    """Why a rollback alert acting on ``component`` is refused; None for the whole state
    ("ers") or one of its components: rolling all of it back for anything else would undo
    the writes of components the alert never named."""
    if component == "ers" or component in COMPONENTS:
        return None
    return (
        f"the alert names '{component}', which a rollback does not restore: label a rollback"
        f" alert with a component of {', '.join(COMPONENTS)}, or with none for the whole state"
    )


def alert_fingerprint(alert: Alert, component: str) -> str:
    """The fingerprint of the incident an alert opens when none is active."""
    return f"alert:{alert.name}:{component}"


def alert_failure(
    alert: Alert, component: str, kind: str, severity: str | None = None
) -> tuple[SpanRecord, Classification]:
    """The failure an alert that lands on no incident opens its own with, of ``severity``
    (else the one its label names)."""
    now_ns = time.time_ns()
    record = SpanRecord(
        name=f"alert.{alert.name}",
        trace_id="",
        span_id=secrets.token_hex(8),
        parent_span_id=None,
        start_ns=now_ns,
        end_ns=now_ns,
        status_code="ERROR",
        status_message=alert.describe(),
        attributes={"ers.component": component, "ers.alert": alert.name},
        service_name="alertmanager",
        exception_type=f"Alert{alert.name}",
        exception_message=alert.describe(),
    )
    classification = Classification(
        severity=severity or incident_severity(alert),
        type=kind,
        impact="service_degraded",
        recoverable=True,
        protocol=None,
        rule=ALERT_RULE,
        component=component,
        fingerprint=alert_fingerprint(alert, component),
    )
    return record, classification
