"""The service's metric instruments, created once per application from its meter.

Names follow the ``ers_`` convention; the Prometheus reader adds ``_total`` to counters.
``event_counter`` and ``seconds_histogram`` state the units every part of the service uses:
events are counted in ``1``, durations measured in seconds; ``value_gauge`` reports one value
read when the metrics are collected.

The instruments every chat touches are kept as plain numbers and read when the metrics are
collected: ``CumulativeCount`` (an observable counter of the meter) and ``BucketHistogram``
(a collector of the Prometheus registry the meter's reader writes to, since OpenTelemetry has
no observable histogram). Both show in ``/metrics`` exactly as the SDK's instruments would.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from service.errors import StorePaused, StoreUnavailable, UserInputError

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
# Every outcome a guard records for an agent call. Each exists at 0 from the agent's start,
# so increase() (AgentErrorRatioHigh's 10-call floor, its ratio) sees its first call.
AGENT_CALL_OUTCOMES = (
    "success",
    "failure",
    "timeout",
    "rejected",
    "refused",  # a remote agent's rate limit or refusal of the request (failure_kinds)
    UserInputError.call_outcome,
    StorePaused.call_outcome,
    StoreUnavailable.call_outcome,
    "synthetic_success",
    "synthetic_failure",
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


class BucketHistogram:
    """A histogram of seconds on the chat path, kept as bucket counts per label set and
    written into the Prometheus exposition when it is collected: a ``record`` is a bisect
    and three additions under a lock (about 1 us) where an SDK histogram's is a measurement
    passed through its views and storages (about 9 us), and every chat records once or twice.
    Its series are the ones the SDK's histogram made (``_bucket`` with ``le``, ``_sum``,
    ``_count``), so rules and dashboards read it unchanged."""

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        description: str,
        buckets: Sequence[float],
        label: str | Sequence[str],
    ) -> None:
        self._name = name
        self._description = description
        self._bounds = tuple(buckets)
        self._labels = [label] if isinstance(label, str) else list(label)
        # Per label values: the count in each bucket (the last one is +Inf), and the sum.
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def record(self, seconds: float, *label_values: str) -> None:
        """``label_values`` in the order of the labels."""
        index = bisect_left(self._bounds, seconds)  # le: a value on a bound is in its bucket
        with self._lock:
            counts = self._counts.get(label_values)
            if counts is None:
                counts = self._counts[label_values] = [0] * (len(self._bounds) + 1)
                self._sums[label_values] = 0.0
            counts[index] += 1
            self._sums[label_values] += seconds

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            series = [
                (value, list(counts), self._sums[value]) for value, counts in self._counts.items()
            ]
        family = HistogramMetricFamily(self._name, self._description, labels=self._labels, unit="")
        bounds = [floatToGoString(bound) for bound in self._bounds] + ["+Inf"]
        for value, counts, total in series:
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric(list(value), buckets, total)
        # An empty label value is no label to Prometheus: it is left out of the exposition.
        family.samples = [
            sample._replace(labels={k: v for k, v in sample.labels.items() if v != ""})
            for sample in family.samples
        ]
        yield family


@dataclass(frozen=True)
class AgentInstruments:
    calls: CumulativeCount
    duration: BucketHistogram
    fallbacks: CumulativeCount
    chat_requests: CumulativeCount

    @classmethod
    def create(cls, meter: Meter, registry: CollectorRegistry) -> AgentInstruments:
        """The instruments on ``meter``, and the duration histogram in ``registry``: the
        Prometheus registry that ``meter``'s reader writes to."""
        instruments = cls(
            calls=CumulativeCount(meter, "ers_agent_calls", "Agent calls by agent and outcome"),
            duration=BucketHistogram(
                registry,
                "ers_agent_call_duration_seconds",
                "Duration of agent calls, including retries",
                AGENT_DURATION_BUCKETS,
                label="agent",
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

    def add_agent(self, agent: str) -> None:
        """Export ``agent``'s call counts at 0 for every outcome, before its first call."""
        for outcome in AGENT_CALL_OUTCOMES:
            self.calls.add(0, {"agent": agent, "outcome": outcome})
