"""Gauges for the system state and health, read from the monitor's last results."""

from __future__ import annotations

import time
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from service.health.checks import MemoryCheck, Status
from service.health.monitor import HealthMonitor
from service.resilience.instruments import value_gauge
from service.resilience.system_state import SystemState, SystemStateMachine


def register_health_metrics(
    meter: Meter,
    machine: SystemStateMachine,
    monitor: HealthMonitor,
    memory: MemoryCheck,
    started_at: float,
) -> None:
    def system_state(options: CallbackOptions) -> Iterable[Observation]:
        current = machine.state
        for state in SystemState:
            yield Observation(int(state is current), {"state": state.value})

    def check_status(options: CallbackOptions) -> Iterable[Observation]:
        report = monitor.last
        if report is None:
            return
        for name, result in report.checks.items():
            for status in Status:
                yield Observation(int(result.status is status), {"check": name, "status": status})

    meter.create_observable_gauge(
        "ers_system_state", [system_state], description="1 for the current system state"
    )
    meter.create_observable_gauge(
        "ers_health_check_status", [check_status], description="1 for each check's status"
    )
    value_gauge(
        meter,
        "ers_process_memory_ratio",
        "Resident memory over the limit",
        lambda: None if memory.last is None else memory.last.ratio,
    )
    value_gauge(
        meter,
        "ers_process_resident_memory_bytes",
        "Resident memory of the process",
        lambda: None if memory.last is None else memory.last.rss_bytes,
        unit="By",
    )
    value_gauge(
        meter,
        "ers_uptime_seconds",
        "Seconds since the service started",
        lambda: time.time() - started_at,
        unit="s",
    )
