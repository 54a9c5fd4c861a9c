"""The alerts/ directory: Prometheus config and rules checked and unit-tested with promtool,
the Alertmanager config checked and its routing tested with amtool, its inhibitions checked
against a real Alertmanager, and the label conventions the ERS webhook relies on."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ALERTS = Path(__file__).resolve().parents[2] / "alerts"
PROMETHEUS_CONFIG = ALERTS / "prometheus.yml"
RULES = ALERTS / "rules.yml"
RULES_TESTS = ALERTS / "rules.test.yml"
ALERTMANAGER_CONFIG = ALERTS / "alertmanager.yml"

ACTIONS = {"isolate", "backup", "rollback", "cleanup"}
SEVERITIES = {"critical", "warning"}
# Alerts whose condition ERS can act on by itself; the others need a person.
EXPECTED_ACTIONS = {
    "AgentErrorRatioHigh": "isolate",
    "CriticalIncidentActive": "backup",
    "CriticalIncidentUnresolved": "rollback",
    "BackupStale": "backup",
    "MemoryCritical": "cleanup",
}
ERS_WEBHOOK = "http://ers:8000/api/emergency/alerts"
ERS_TOKEN_FILE = "/run/secrets/ers_alert_token"
PEOPLE = "people"
TOOL_TIMEOUT = 60


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerting_rules() -> list[dict[str, Any]]:
    return [
        rule for group in load_yaml(RULES)["groups"] for rule in group["rules"] if "alert" in rule
    ]


def tool(name: str, *alternatives: str) -> str:
    for candidate in (name, *alternatives):
        path = shutil.which(candidate)
        if path:
            return path
    pytest.skip(f"{name} is not installed; `make system-test` installs it")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)


def assert_succeeds(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def promtool() -> str:
    return tool("promtool")


@pytest.fixture(scope="module")
def amtool() -> str:
    return tool("amtool")


# ---- Prometheus ---------------------------------------------------------------------------


@pytest.mark.integration
def test_prometheus_config_is_valid_and_finds_its_rules(promtool: str) -> None:
    # promtool resolves rule_files against the config file's folder, as Prometheus does.
    result = run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert_succeeds(result)
    assert "1 rule files found" in result.stdout


def test_prometheus_scrapes_ers_and_itself_every_15s_and_alerts_alertmanager() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == ["rules.yml"]
    targets = {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {"ers": ["ers:8000"], "prometheus": ["localhost:9090"]}
    alertmanagers = config["alerting"]["alertmanagers"]
    assert [t for am in alertmanagers for s in am["static_configs"] for t in s["targets"]] == [
        "alertmanager:9093"
    ]


@pytest.mark.integration
def test_rules_are_valid(promtool: str) -> None:
    assert_succeeds(run(promtool, "check", "rules", str(RULES)))


@pytest.mark.integration
def test_rules_pass_their_unit_tests(promtool: str) -> None:
    assert_succeeds(run(promtool, "test", "rules", str(RULES_TESTS)))


def test_every_alert_has_a_firing_case_and_a_silent_case() -> None:
    cases = [
        case
        for group in load_yaml(RULES_TESTS)["tests"]
        for case in group.get("alert_rule_test", [])
    ]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    names = {rule["alert"] for rule in alerting_rules()}
    assert names - fires == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"


# ---- Rule conventions the webhook and Alertmanager rely on --------------------------------


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_alert_carries_severity_and_the_three_annotations(rule: dict[str, Any]) -> None:
    # runbook_url: the name Grafana's alert views and most notification templates link.
    assert rule["labels"].get("severity") in SEVERITIES
    for annotation in ("summary", "description", "runbook_url"):
        assert rule.get("annotations", {}).get(annotation), f"{annotation} is missing"


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_alert_action_is_the_expected_one(rule: dict[str, Any]) -> None:
    action = rule["labels"].get("action")
    assert action in ACTIONS | {None}
    assert action == EXPECTED_ACTIONS.get(rule["alert"])


def test_every_family_pairs_a_critical_alert_with_a_warning() -> None:
    severities: dict[str, set[str]] = {}
    for rule in alerting_rules():
        if "family" in rule["labels"]:
            severities.setdefault(rule["labels"]["family"], set()).add(rule["labels"]["severity"])
    assert severities, "no family: the critical-mutes-warning inhibition would be unused"
    assert all(found == SEVERITIES for found in severities.values()), severities


def test_per_agent_alerts_keep_the_agent_label() -> None:
    # The webhook needs the agent to know what to isolate; `by (agent)` must survive.
    for rule in alerting_rules():
        if rule["labels"].get("action") == "isolate" or "ers_breaker_state" in rule["expr"]:
            assert "by (agent)" in rule["expr"], rule["alert"]


# ---- Alertmanager -------------------------------------------------------------------------


@pytest.mark.integration
def test_alertmanager_config_is_valid(amtool: str) -> None:
    # amtool does not read credentials_file (the webhook reads it when it sends), so the
    # compose secret path needs no stand-in here.
    result = run(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    assert_succeeds(result)
    assert "2 inhibit rules" in result.stdout


def route_receivers(amtool: str, labels: dict[str, str]) -> list[str]:
    pairs = [f"{name}={value}" for name, value in labels.items()]
    result = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *pairs)
    assert_succeeds(result)
    return result.stdout.strip().split(",")


def rule_alert_labels(rule: dict[str, Any]) -> dict[str, str]:
    labels = {"alertname": rule["alert"], **rule["labels"]}
    if "by (agent)" in rule["expr"]:
        labels["agent"] = "nutrition"
    if "ers_backup_last_success" in rule["expr"]:
        labels["component"] = "budgets"
    return labels


@pytest.mark.integration
@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_each_alert_reaches_its_action_receiver_and_people(
    amtool: str, rule: dict[str, Any]
) -> None:
    action = rule["labels"].get("action")
    expected = [f"ers-{action}", PEOPLE] if action else [PEOPLE]
    assert route_receivers(amtool, rule_alert_labels(rule)) == expected


@pytest.mark.integration
@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"alertname": "X", "action": "isolate", "agent": "budget"}, ["ers-isolate", PEOPLE]),
        ({"alertname": "X", "action": "backup", "component": "profiles"}, ["ers-backup", PEOPLE]),
        (
            {"alertname": "X", "action": "rollback", "component": "budgets"},
            ["ers-rollback", PEOPLE],
        ),
        ({"alertname": "X", "action": "cleanup"}, ["ers-cleanup", PEOPLE]),
        ({"alertname": "X", "action": "none", "severity": "critical"}, [PEOPLE]),
        ({"alertname": "X", "action": "reboot"}, [PEOPLE]),
        ({"alertname": "X"}, [PEOPLE]),
    ],
    ids=["isolate", "backup", "rollback", "cleanup", "none", "unknown-action", "no-action"],
)
def test_routing_by_action_label(amtool: str, labels: dict[str, str], expected: list[str]) -> None:
    assert route_receivers(amtool, labels) == expected


def test_ers_receivers_post_to_the_webhook_with_the_token_file_and_resolutions() -> None:
    receivers = {r["name"]: r for r in load_yaml(ALERTMANAGER_CONFIG)["receivers"]}
    assert set(receivers) == {PEOPLE} | {f"ers-{action}" for action in ACTIONS}
    for action in ACTIONS:
        [webhook] = receivers[f"ers-{action}"]["webhook_configs"]
        assert webhook["url"] == ERS_WEBHOOK
        assert webhook["send_resolved"] is True
        assert webhook["http_config"]["authorization"]["credentials_file"] == ERS_TOKEN_FILE
    [people] = receivers[PEOPLE]["webhook_configs"]
    assert people["send_resolved"] is True


def test_alerts_are_grouped_by_alertname_and_target() -> None:
    route = load_yaml(ALERTMANAGER_CONFIG)["route"]
    assert route["group_by"] == ["alertname", "agent", "component"]
    assert route["receiver"] == PEOPLE


# ---- Inhibition, against a real Alertmanager -----------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[httpx.Client]:
    binary = tool("prometheus-alertmanager", "alertmanager")
    # Deliveries go to a closed local port, so nothing leaves the machine even where the
    # hostname `ers` resolves; inhibition does not depend on the receivers.
    config = re.sub(r"url: \S+", "url: http://127.0.0.1:9/", ALERTMANAGER_CONFIG.read_text())
    (tmp_path / "alertmanager.yml").write_text(config)
    log_path = tmp_path / "alertmanager.log"
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.get("/-/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log_tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"Alertmanager did not become ready:\n{log_tail}")
            time.sleep(0.1)
        yield client
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def post_alerts(client: httpx.Client, *label_sets: dict[str, str]) -> None:
    response = client.post("/api/v2/alerts", json=[{"labels": labels} for labels in label_sets])
    response.raise_for_status()


def wait_for_inhibition(client: httpx.Client, expected: dict[str, bool]) -> dict[str, bool]:
    """Which of the expected alerts are inhibited, once the state is as expected or 5 s passed:
    the inhibitor learns of new alerts asynchronously after the POST returns."""
    deadline = time.monotonic() + 5
    while True:
        alerts = client.get("/api/v2/alerts").json()
        state = {a["labels"]["alertname"]: bool(a["status"]["inhibitedBy"]) for a in alerts}
        found = {name: state.get(name) for name in expected}
        if found == expected or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.integration
def test_critical_mutes_the_warning_of_its_family_and_nothing_else(
    alertmanager: httpx.Client,
) -> None:
    post_alerts(
        alertmanager,
        {"alertname": "MemoryCritical", "severity": "critical", "family": "memory"},
        {"alertname": "MemoryHigh", "severity": "warning", "family": "memory"},
        {"alertname": "ChatErrorBudgetBurnFast", "severity": "critical", "family": "chat_slo"},
        {"alertname": "ChatErrorBudgetBurnSlow", "severity": "warning", "family": "chat_slo"},
        # Same family, another target: not the same problem, so not muted.
        {"alertname": "RestoreDrillFailing", "severity": "critical", "family": "drill"},
        {
            "alertname": "RestoreDrillOverdue",
            "severity": "warning",
            "family": "drill",
            "component": "x",
        },
        # Without a family on either side, `equal` would hold on empty labels: a critical
        # alert must still not mute an unrelated warning.
        {"alertname": "CriticalIncidentActive", "severity": "critical", "action": "backup"},
        {"alertname": "ActiveIncidentsHigh", "severity": "warning"},
        {"alertname": "BackupStale", "severity": "warning", "component": "budgets"},
    )
    expected = {
        "MemoryCritical": False,
        "MemoryHigh": True,
        "ChatErrorBudgetBurnFast": False,
        "ChatErrorBudgetBurnSlow": True,
        "RestoreDrillFailing": False,
        "RestoreDrillOverdue": False,
        "CriticalIncidentActive": False,
        "ActiveIncidentsHigh": False,
        "BackupStale": False,
    }
    assert wait_for_inhibition(alertmanager, expected) == expected


@pytest.mark.integration
def test_ers_down_mutes_every_other_alert(alertmanager: httpx.Client) -> None:
    post_alerts(
        alertmanager,
        {"alertname": "ErsDown", "severity": "critical", "job": "ers", "instance": "ers:8000"},
        {"alertname": "AgentErrorRatioHigh", "severity": "critical", "agent": "budget"},
        {"alertname": "CircuitBreakerOpenTooLong", "severity": "warning", "agent": "budget"},
    )
    expected = {"ErsDown": False, "AgentErrorRatioHigh": True, "CircuitBreakerOpenTooLong": True}
    assert wait_for_inhibition(alertmanager, expected) == expected


def test_inhibition_rules_require_a_family_on_both_sides() -> None:
    rules = load_yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]
    family_rule = next(rule for rule in rules if "equal" in rule)
    assert family_rule["equal"] == ["family", "agent", "component"]
    assert 'family=~".+"' in family_rule["source_matchers"]
    assert 'family=~".+"' in family_rule["target_matchers"]
