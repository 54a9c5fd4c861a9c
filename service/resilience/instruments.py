"""The service's metric instruments, created once per application from its meter.

Names follow the ``ers_`` convention; the Prometheus reader adds ``_total`` to counters.
``event_counter`` and ``seconds_histogram`` state the units every part of the service uses:
events are counted in ``1``, durations measured in seconds; ``value_gauge`` reports one value
read when the metrics are collected.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation

# Latency buckets for agent calls, in seconds: deterministic agents answer in well under a
# millisecond, guarded failures can take the whole timeout.
AGENT_DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def event_counter(meter: Meter, name: str, description: str) -> Counter:
    """A counter of events (unit ``1``)."""
    return meter.create_counter(name, unit="1", description=description)


def seconds_histogram(
    meter: Meter, name: str, description: str, buckets: Sequence[float]
) -> Histogram:
    """A histogram of durations in seconds, over ``buckets`` chosen for what it measures."""
    return meter.create_histogram(
        name, unit="s", description=description, explicit_bucket_boundaries_advisory=buckets
    )


def value_gauge(
    meter: Meter, name: str, description: str, read: Callable[[], float | None], unit: str = ""
) -> None:
    """A gauge of one value, ``read`` at each collection; absent while it reads None."""

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        value = read()
        return [] if value is None else [Observation(value)]

    meter.create_observable_gauge(name, [observe], unit=unit, description=description)


class CumulativeCount:
    """A counter on the chat path, kept as plain integers per label set and read when the
    metrics are collected (an observable counter, cumulative like any counter): an ``add``
    is a dict update (about 0.1 us) where an SDK counter's is a measurement (about 5 us),
    and every chat adds two or three times."""

    def __init__(self, meter: Meter, name: str, description: str) -> None:
        self._counts: dict[tuple[tuple[str, str], ...], int] = {}
        self._lock = threading.Lock()
        meter.create_observable_counter(
            name, callbacks=[self._observe], unit="1", description=description
        )

    def add(self, amount: int, attributes: Mapping[str, str]) -> None:
        key = tuple(attributes.items())
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + amount

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._counts.items())
        return [Observation(value, dict(key)) for key, value in counts]


@dataclass(frozen=True)
class AgentInstruments:
    calls: CumulativeCount
    duration: Histogram
    fallbacks: CumulativeCount
    chat_requests: CumulativeCount

    @classmethod
    def create(cls, meter: Meter) -> AgentInstruments:
        instruments = cls(
            calls=CumulativeCount(meter, "ers_agent_calls", "Agent calls by agent and outcome"),
            duration=seconds_histogram(
                meter,
                "ers_agent_call_duration_seconds",
                "Duration of agent calls, including retries",
                AGENT_DURATION_BUCKETS,
            ),
            fallbacks=CumulativeCount(meter, "ers_fallbacks", "Fallback answers by agent and kind"),
            chat_requests=CumulativeCount(
                meter, "ers_chat_requests", "Chat requests by outcome (ok, degraded, error, shed)"
            ),
        )
        # Every outcome exists from start-up, so rates and ratios over it are 0, not empty.
        for outcome in ("ok", "degraded", "error", "shed"):
            instruments.chat_requests.add(0, {"outcome": outcome})
        return instruments
