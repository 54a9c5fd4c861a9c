"""What a circuit breaker publishes: events, a bounded history, listeners, span events.

Metrics, logs and the audit trail are listeners; the breaker knows none of them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from service.errors import DependencyError
from service.resilience.breaker_config import BreakerState
from telemetry.exception_events import record_exception

if TYPE_CHECKING:
    from service.resilience.breaker import CircuitBreaker

log = logging.getLogger(__name__)


class BreakerEventKind(StrEnum):
    STATE_TRANSITION = "state_transition"
    # An operator reset a breaker that was already closed: its counters were cleared.
    RESET = "reset"
    # A forced-open breaker was forced again: new reason, source or expiry.
    FORCE_RENEWED = "force_renewed"
    CALL_NOT_PERMITTED = "call_not_permitted"
    ERROR_RECORDED = "error_recorded"


# Kinds kept in the history; the per-call kinds would crowd out the transitions.
HISTORY_KINDS = frozenset(
    {BreakerEventKind.STATE_TRANSITION, BreakerEventKind.RESET, BreakerEventKind.FORCE_RENEWED}
)


def iso_utc(timestamp: float | None) -> str | None:
    """ISO-8601 UTC with milliseconds, e.g. ``2024-05-01T12:00:00.000Z``."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class BreakerEvent:
    kind: BreakerEventKind
    breaker: str
    from_state: BreakerState
    to_state: BreakerState
    # Wall-clock time (seconds since the epoch).
    at: float
    reason: str
    source: str | None = None
    # A forcing put back after a restart or taken from another replica: the same isolation
    # as before, not a new one, so it is not counted again, and ``at`` is when it began.
    carried: bool = False

    def to_dict(self) -> dict[str, str | None]:
        return {
            "kind": self.kind.value,
            "breaker": self.breaker,
            "from": self.from_state.value,
            "to": self.to_state.value,
            "at": iso_utc(self.at),
            "reason": self.reason,
            "source": self.source,
        }


BreakerListener = Callable[[BreakerEvent], None]


@dataclass(slots=True, eq=False)
class _Subscription:
    listener: BreakerListener
    kinds: frozenset[BreakerEventKind] | None
    has_failed: bool = False


class BreakerEvents:
    """Keeps the bounded history and delivers events to listeners, in subscription order.

    A listener that raises is logged the first time and skipped for that event; the breaker
    carries on either way.
    """

    __slots__ = ("_history", "_subscriptions", "_by_kind")

    def __init__(self, history_size: int) -> None:
        self._history: deque[BreakerEvent] = deque(maxlen=history_size)
        self._subscriptions: list[_Subscription] = []
        self._by_kind: dict[BreakerEventKind, tuple[_Subscription, ...]] = {
            kind: () for kind in BreakerEventKind
        }

    def subscribe(
        self, listener: BreakerListener, kinds: Iterable[BreakerEventKind] | None = None
    ) -> Callable[[], None]:
        """Deliver events (all kinds, or only ``kinds``) to ``listener``; returns unsubscribe."""
        subscription = _Subscription(listener, None if kinds is None else frozenset(kinds))
        self._subscriptions.append(subscription)
        self._index()

        def unsubscribe() -> None:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
                self._index()

        return unsubscribe

    def _index(self) -> None:
        self._by_kind = {
            kind: tuple(s for s in self._subscriptions if s.kinds is None or kind in s.kinds)
            for kind in BreakerEventKind
        }

    def wanted(self, kind: BreakerEventKind) -> bool:
        """Whether an event of this kind would be kept or delivered (else skip building it)."""
        return kind in HISTORY_KINDS or bool(self._by_kind[kind])

    def publish(self, event: BreakerEvent) -> None:
        if event.kind in HISTORY_KINDS:
            self._history.append(event)
        for subscription in self._by_kind[event.kind]:
            try:
                subscription.listener(event)
            except Exception:
                if not subscription.has_failed:
                    subscription.has_failed = True
                    log.exception(
                        "breaker listener %r failed on a %s event of breaker '%s'; "
                        "later failures of this listener are not logged",
                        subscription.listener,
                        event.kind.value,
                        event.breaker,
                    )

    def history(self) -> list[BreakerEvent]:
        return list(self._history)


def add_transition_span_event(event: BreakerEvent) -> None:
    """Record a state transition as a ``breaker.transition`` event on the current span."""
    if event.kind is not BreakerEventKind.STATE_TRANSITION:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes = {
        "ers.breaker.name": event.breaker,
        "ers.breaker.from": event.from_state.value,
        "ers.breaker.to": event.to_state.value,
        "ers.breaker.reason": event.reason,
    }
    if event.source is not None:
        attributes["ers.breaker.source"] = event.source
    span.add_event("breaker.transition", attributes, timestamp=int(event.at * 1e9))


class BreakerOpened(DependencyError):
    """Reported when a breaker opens on a call that itself succeeded (see ``report_trip``)."""


def report_trip(tracer: trace.Tracer, span_name: str, breaker: CircuitBreaker) -> None:
    """The breaker opened on a call that succeeded (its window filled with a failure rate
    over the line, the failed attempts hidden by retries; or a slow trial): no call span is
    an error, so an error span of its own, ``span_name``, reports the trip to the incident
    pipeline."""
    history = breaker.history()
    why = history[-1].reason if history else "opened"
    last = breaker.snapshot()["lastError"]  # None when slow calls alone opened it
    trip = BreakerOpened(
        f"breaker '{breaker.name}' opened: {why}" + (f"; last error: {last}" if last else "")
    )
    with tracer.start_as_current_span(
        span_name,
        attributes={"ers.agent": breaker.name, "ers.synthetic": False},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        record_exception(span, trip, {})
        span.set_status(Status(StatusCode.ERROR, str(trip)))
        span.set_attribute("error.type", "BreakerOpened")
