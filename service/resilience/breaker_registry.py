"""Breakers by name: listeners subscribed here reach present and future breakers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from service.resilience.breaker import CircuitBreaker
from service.resilience.breaker_config import BreakerState
from service.resilience.breaker_events import BreakerEventKind, BreakerListener

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
FORCED_OPEN, DISABLED = BreakerState.FORCED_OPEN, BreakerState.DISABLED


class BreakerRegistry(Mapping[str, CircuitBreaker]):
    """The breakers by name; listeners subscribed here reach present and future breakers."""

    def __init__(self, breakers: Iterable[CircuitBreaker] = ()) -> None:
        self._breakers: dict[str, CircuitBreaker] = {}
        self._listeners: list[tuple[BreakerListener, tuple[BreakerEventKind, ...] | None]] = []
        for breaker in breakers:
            self.add(breaker)

    def add(self, breaker: CircuitBreaker) -> CircuitBreaker:
        if breaker.name in self._breakers:
            raise ValueError(f"a breaker named '{breaker.name}' is already registered")
        self._breakers[breaker.name] = breaker
        for listener, kinds in self._listeners:
            breaker.subscribe(listener, kinds)
        return breaker

    def subscribe(
        self, listener: BreakerListener, kinds: Iterable[BreakerEventKind] | None = None
    ) -> None:
        kinds_tuple = None if kinds is None else tuple(kinds)
        self._listeners.append((listener, kinds_tuple))
        for breaker in self._breakers.values():
            breaker.subscribe(listener, kinds_tuple)

    def __getitem__(self, name: str) -> CircuitBreaker:
        try:
            return self._breakers[name]
        except KeyError:
            known = ", ".join(sorted(self._breakers)) or "none"
            raise KeyError(f"no breaker named '{name}'; known breakers: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._breakers)

    def __len__(self) -> int:
        return len(self._breakers)

    def all(self) -> list[CircuitBreaker]:
        return list(self._breakers.values())

    def totals(self) -> dict[str, int]:
        """Counts by state; ``open`` includes forced-open breakers."""
        states = [breaker.state for breaker in self._breakers.values()]
        return {
            "total": len(states),
            "open": sum(state in (OPEN, FORCED_OPEN) for state in states),
            "closed": states.count(CLOSED),
            "halfOpen": states.count(HALF_OPEN),
            "forcedOpen": states.count(FORCED_OPEN),
            "disabled": states.count(DISABLED),
        }
