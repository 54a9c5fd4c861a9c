"""The service's metric instruments, created once per application from its meter.

Names follow the ``ers_`` convention; the Prometheus reader adds ``_total`` to counters.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.metrics import Counter, Histogram, Meter

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


@dataclass(frozen=True)
class AgentInstruments:
    calls: Counter
    duration: Histogram
    fallbacks: Counter
    chat_requests: Counter

    @classmethod
    def create(cls, meter: Meter) -> AgentInstruments:
        instruments = cls(
            calls=meter.create_counter(
                "ers_agent_calls", unit="1", description="Agent calls by agent and outcome"
            ),
            duration=meter.create_histogram(
                "ers_agent_call_duration_seconds",
                unit="s",
                description="Duration of agent calls, including retries",
                explicit_bucket_boundaries_advisory=AGENT_DURATION_BUCKETS,
            ),
            fallbacks=meter.create_counter(
                "ers_fallbacks", unit="1", description="Fallback answers by agent and kind"
            ),
            chat_requests=meter.create_counter(
                "ers_chat_requests",
                unit="1",
                description="Chat requests by outcome (ok, degraded, error, shed)",
            ),
        )
        # Every outcome exists from start-up, so rates and ratios over it are 0, not empty.
        for outcome in ("ok", "degraded", "error", "shed"):
            instruments.chat_requests.add(0, {"outcome": outcome})
        return instruments
