"""The HTTP API fuzzed from its own OpenAPI document against a real uvicorn process:
no 5xx, no reply that breaks its own schema, no status the document does not declare."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import ErsProcess, start_ers

HEALTH_UNHEALTHY = ("GET", "/api/emergency/health", 503)
EXAMPLES = int(os.environ.get("ERS_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def ers_for_fuzzing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ErsProcess]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    ers = start_ers(
        workdir,
        env={
            "ERS_AGENT_TIMEOUT_S": "0.3",
            "ERS_BREAKER_OPEN_DURATION_S": "1",
            "ERS_BACKUPS_ENABLED": "true",
            "ERS_BACKUP_SCHEDULE_ENABLED": "false",
        },
    )
    ers.wait_for_backups()
    try:
        yield ers
    finally:
        assert ers.stop() == 0, ers.log()[-2000:]


@pytest.fixture(scope="module")
def api_schema(ers_for_fuzzing: ErsProcess):  # noqa: ANN201
    return schemathesis.openapi.from_url(f"{ers_for_fuzzing.url}/openapi.json")


def fuzz(operation, mode, calls: dict[str, int], seen: dict[str, set[int]]) -> None:  # noqa: ANN001
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case) -> None:  # noqa: ANN001
        calls[operation.label] = calls.get(operation.label, 0) + 1
        response = case.call(timeout=30)
        seen.setdefault(operation.label, set()).add(response.status_code)
        # /health answers 503 when the service is unhealthy (fuzzing isolates agents), so a
        # load balancer can act on it; everywhere else a 5xx is a defect.
        if (case.method, case.path, response.status_code) != HEALTH_UNHEALTHY:
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} answered {response.status_code}: "
                f"{response.text[:300]}"
            )
        case.validate_response(response, checks=[response_schema_conformance])

    call()


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_no_server_errors_and_replies_match_their_schema(api_schema, mode) -> None:  # noqa: ANN001
    """Valid inputs (positive), and inputs that break the schema on purpose (negative; an
    operation without parameters or body has no invalid input to make)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    calls: dict[str, int] = {}
    seen: dict[str, set[int]] = {}
    for operation in operations:
        try:
            fuzz(operation, mode, calls, seen)
        except Unsatisfiable:
            assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    print(mode, {label: sorted(statuses) for label, statuses in sorted(seen.items())})
    assert len(calls) >= len(operations) // 2
    assert sum(calls.values()) >= 3 * len(calls)
    # Collected over the whole run rather than checked per call, so one run names them all.
    declared = {op.label: {int(s) for s in op.responses.status_codes} for op in operations}
    undeclared = [
        f"{label}: {status}"
        for label, statuses in sorted(seen.items())
        for status in sorted(statuses - declared[label])
    ]
    assert not undeclared, "answered but not in /openapi.json: " + ", ".join(undeclared)
