"""Breaker metrics, as a subscriber of the breakers' events (the breakers know no metrics)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from service.resilience.breaker import CircuitBreaker
from service.resilience.breaker_config import BreakerState
from service.resilience.breaker_events import BreakerEvent, BreakerEventKind
from service.resilience.instruments import event_counter


class BreakerMetrics:
    """``ers_breaker_state``, ``ers_breaker_transitions_total`` and
    ``ers_breaker_rejected_calls_total`` for every breaker attached."""

    def __init__(self, meter: Meter) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}
        self._transitions = event_counter(
            meter, "ers_breaker_transitions", "Breaker state transitions"
        )
        self._rejected = event_counter(
            meter, "ers_breaker_rejected_calls", "Calls a breaker did not permit"
        )
        self._forced = event_counter(
            meter,
            "ers_breaker_forced_opens",
            "Breakers forced open, by the source that forced them",
        )
        meter.create_observable_gauge(
            "ers_breaker_state",
            callbacks=[self._observe_states],
            unit="1",
            description="1 for each breaker's current state, 0 for the others",
        )
        self._unsubscribers: list[Callable[[], None]] = []

    def attach(self, breakers: Iterable[CircuitBreaker]) -> None:
        for breaker in breakers:
            self._breakers[breaker.name] = breaker
            self._unsubscribers.append(
                breaker.subscribe(
                    self._on_event,
                    kinds=(BreakerEventKind.STATE_TRANSITION, BreakerEventKind.CALL_NOT_PERMITTED),
                )
            )

    def detach(self) -> None:
        for unsubscribe in self._unsubscribers:
            unsubscribe()
        self._unsubscribers.clear()

    def _on_event(self, event: BreakerEvent) -> None:
        if event.kind is BreakerEventKind.CALL_NOT_PERMITTED:
            self._rejected.add(1, {"agent": event.breaker})
            return
        self._transitions.add(
            1, {"agent": event.breaker, "from": event.from_state.value, "to": event.to_state.value}
        )
        if event.to_state is BreakerState.FORCED_OPEN and not event.carried:
            self._forced.add(1, {"agent": event.breaker, "source": event.source or "unknown"})

    def _observe_states(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, breaker in self._breakers.items():
            current = breaker.state
            for state in BreakerState:
                yield Observation(int(state is current), {"agent": name, "state": state.value})
