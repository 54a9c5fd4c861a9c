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

from service.incidents.ledger import FIRING_HOLD_S

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
# The address comes from a mounted file: `ers`, or the fleet's balancer (tests/compose).
ERS_WEBHOOK_FILE = "/etc/alertmanager/ers_webhook_url"
ERS_TOKEN_FILE = "/run/secrets/ers_alert_token"
PEOPLE = "people"
WATCHDOG = "watchdog"
# Alerts about monitoring itself: the Watchdog fires always (never silent) and goes to the
# dead man's switch only.
ALWAYS_FIRING = {"Watchdog"}
MONITORING_SEVERITIES = {"Watchdog": "none"}
# `url_file` in webhook_configs needs Alertmanager 0.26 (compose pins 0.27).
URL_FILE_SINCE = (0, 26)
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


def version_of(binary: str) -> tuple[int, ...]:
    result = run(binary, "--version")
    found = re.search(r"version (\d+)\.(\d+)", result.stdout + result.stderr)
    assert found, f"{binary} --version: {result.stdout}{result.stderr}"
    return (int(found[1]), int(found[2]))


def config_for(binary: str, text: str) -> str:
    """alertmanager.yml as a local Alertmanager older than 0.26 can read it: each url_file
    becomes a URL on a closed local port (nothing leaves the machine). Routing and inhibition
    do not depend on receivers' addresses."""
    if version_of(binary) >= URL_FILE_SINCE:
        return text
    return re.sub(r"url_file: \S+", "url: http://127.0.0.1:9/", text)


@pytest.fixture(scope="module")
def amtool_config(amtool: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("amtool") / "alertmanager.yml"
    path.write_text(config_for(amtool, ALERTMANAGER_CONFIG.read_text()))
    return path


# ---- Prometheus ---------------------------------------------------------------------------


@pytest.mark.integration
def test_prometheus_config_is_valid_and_finds_its_rules(promtool: str) -> None:
    # promtool resolves rule_files against the config file's folder, as Prometheus does.
    result = run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert_succeeds(result)
    assert "1 rule files found" in result.stdout


def test_prometheus_scrapes_ers_itself_and_the_watchers_every_15s_and_alerts_alertmanager() -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == ["rules.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # ERS's replicas come from a file, which the fleet replaces (tests/compose checks both).
    assert jobs["ers"]["file_sd_configs"] == [{"files": ["targets/ers.yml"]}]
    targets = {
        name: [t for static in job.get("static_configs", []) for t in static["targets"]]
        for name, job in jobs.items()
    }
    assert targets == {
        "ers": [],
        "prometheus": ["localhost:9090"],
        "alertmanager": ["alertmanager:9093"],
        "otel-collector": ["otel-collector:8888"],
        "tempo": ["tempo:3200"],
        "grafana": ["grafana:3000"],
    }
    alertmanagers = config["alerting"]["alertmanagers"]
    assert [t for am in alertmanagers for s in am["static_configs"] for t in s["targets"]] == [
        "alertmanager:9093"
    ]


@pytest.mark.integration
def test_rules_are_valid(promtool: str) -> None:
    checked = run(promtool, "check", "rules", str(RULES))
    assert_succeeds(checked)
    # promtool's lint still exits 0: two rules of one alert must differ in a label.
    assert "lint error" not in checked.stdout + checked.stderr, checked.stdout + checked.stderr


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
    assert names - ALWAYS_FIRING - silent == set(), "alerts never shown silent"


# ---- Rule conventions the webhook and Alertmanager rely on --------------------------------


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_alert_carries_severity_and_the_three_annotations(rule: dict[str, Any]) -> None:
    # runbook_url: the name Grafana's alert views and most notification templates link.
    expected = {MONITORING_SEVERITIES[rule["alert"]]} if rule["alert"] in ALWAYS_FIRING else None
    assert rule["labels"].get("severity") in (expected or SEVERITIES)
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
def test_alertmanager_config_is_valid(amtool: str, amtool_config: Path) -> None:
    # amtool does not read credentials_file or url_file (the webhook reads them when it
    # sends), so the compose paths need no stand-in here.
    result = run(amtool, "check-config", str(amtool_config))
    assert_succeeds(result)
    assert "2 inhibit rules" in result.stdout


@pytest.mark.integration
def test_alertmanager_config_is_valid_as_written_where_url_file_is_supported(amtool: str) -> None:
    if version_of(amtool) < URL_FILE_SINCE:
        pytest.skip(
            f"amtool {version_of(amtool)} predates url_file (0.26); compose runs 0.27, and "
            "the other checks read the file with each url_file made a url"
        )
    assert_succeeds(run(amtool, "check-config", str(ALERTMANAGER_CONFIG)))


def test_the_local_stand_in_only_replaces_url_files() -> None:
    text = ALERTMANAGER_CONFIG.read_text()
    stand_in = re.sub(r"url_file: \S+", "url: http://127.0.0.1:9/", text)
    assert stand_in.count("url: http://127.0.0.1:9/") == text.count("url_file:") == 3
    assert yaml.safe_load(stand_in)["route"] == load_yaml(ALERTMANAGER_CONFIG)["route"]


def route_receivers(amtool: str, labels: dict[str, str], config: Path) -> list[str]:
    pairs = [f"{name}={value}" for name, value in labels.items()]
    result = run(amtool, "config", "routes", "test", f"--config.file={config}", *pairs)
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
    amtool: str, amtool_config: Path, rule: dict[str, Any]
) -> None:
    action = rule["labels"].get("action")
    expected = [f"ers-{action}", PEOPLE] if action else [PEOPLE]
    if rule["alert"] == "Watchdog":
        expected = [WATCHDOG]  # the dead man's switch alone: people would hear it all day
    assert route_receivers(amtool, rule_alert_labels(rule), amtool_config) == expected


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
def test_routing_by_action_label(
    amtool: str, amtool_config: Path, labels: dict[str, str], expected: list[str]
) -> None:
    assert route_receivers(amtool, labels, amtool_config) == expected


def test_ers_receivers_post_to_the_webhook_with_the_token_file_and_resolutions() -> None:
    receivers = {r["name"]: r for r in load_yaml(ALERTMANAGER_CONFIG)["receivers"]}
    assert set(receivers) == {PEOPLE, WATCHDOG} | {f"ers-{action}" for action in ACTIONS}
    for action in ACTIONS:
        [webhook] = receivers[f"ers-{action}"]["webhook_configs"]
        assert webhook["url_file"] == ERS_WEBHOOK_FILE and "url" not in webhook
        assert webhook["send_resolved"] is True
        assert webhook["http_config"]["authorization"]["credentials_file"] == ERS_TOKEN_FILE
    # Outside addresses (which usually carry a token) come from compose secrets.
    [people] = receivers[PEOPLE]["webhook_configs"]
    assert people["send_resolved"] is True
    assert people["url_file"] == "/run/secrets/alert_people_url"
    [switch] = receivers[WATCHDOG]["webhook_configs"]
    assert switch["url_file"] == "/run/secrets/alert_watchdog_url"
    assert "url:" not in ALERTMANAGER_CONFIG.read_text()


def test_a_firing_holds_its_incident_for_twice_the_longest_repeat_interval() -> None:
    """ERS counts an alert as still firing while Alertmanager repeats it (FIRING_HOLD_S after
    its last delivery): a route that repeats less often would let its incident resolve."""
    units = {"s": 1, "m": 60, "h": 3600}

    def intervals(route: dict[str, Any]) -> Iterator[float]:
        if "repeat_interval" in route:
            number, unit = re.fullmatch(r"(\d+)([smh])", route["repeat_interval"]).groups()  # type: ignore[union-attr]
            yield int(number) * units[unit]
        for child in route.get("routes", []):
            yield from intervals(child)

    longest = max(intervals(load_yaml(ALERTMANAGER_CONFIG)["route"]))
    assert 2 * longest <= FIRING_HOLD_S


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
    config = config_for(binary, config)
    if "url_file:" in config:  # a local 0.26+: files it can read, pointing nowhere
        (tmp_path / "nowhere").write_text("http://127.0.0.1:9/")
        config = re.sub(r"url_file: \S+", f"url_file: {tmp_path / 'nowhere'}", config)
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


@pytest.mark.integration
def test_alertmanager_exports_the_failure_counter_the_monitoring_alert_reads(
    alertmanager: httpx.Client,
) -> None:
    rule = next(r for r in alerting_rules() if r["alert"] == "AlertmanagerNotificationsFailing")
    metric = re.search(r"rate\((\w+)\[", rule["expr"])
    assert metric
    exposition = alertmanager.get("/metrics").text
    series = re.findall(rf"^{metric[1]}\{{([^}}]*)\}}", exposition, re.MULTILINE)
    assert series, f"Alertmanager exports no {metric[1]}"
    # The alert is per integration: the label must be there (webhook among them).
    assert any('integration="webhook"' in labels for labels in series), series


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
def test_no_replica_answering_mutes_every_other_alert_but_monitoring(
    alertmanager: httpx.Client,
) -> None:
    post_alerts(
        alertmanager,
        {"alertname": "ErsUnreachable", "severity": "critical"},
        {"alertname": "ErsDown", "severity": "critical", "job": "ers", "instance": "ers:8000"},
        {"alertname": "AgentErrorRatioHigh", "severity": "critical", "agent": "budget"},
        {"alertname": "CircuitBreakerOpenTooLong", "severity": "warning", "agent": "budget"},
        # Monitoring itself is no symptom of ERS's outage: the dead man's switch must keep
        # hearing the Watchdog, and people must hear that notifications fail.
        {"alertname": "Watchdog", "severity": "none", "scope": "monitoring"},
        {
            "alertname": "AlertmanagerNotificationsFailing",
            "severity": "critical",
            "scope": "monitoring",
            "integration": "webhook",
        },
    )
    expected = {
        "ErsUnreachable": False,
        "ErsDown": True,
        "AgentErrorRatioHigh": True,
        "CircuitBreakerOpenTooLong": True,
        "Watchdog": False,
        "AlertmanagerNotificationsFailing": False,
    }
    assert wait_for_inhibition(alertmanager, expected) == expected


@pytest.mark.integration
def test_one_replica_down_mutes_nothing(alertmanager: httpx.Client) -> None:
    # In the fleet the other replica still acts on alerts, so they must still reach it.
    post_alerts(
        alertmanager,
        {"alertname": "ErsDown", "severity": "critical", "job": "ers", "instance": "ers-2:8000"},
        {"alertname": "AgentErrorRatioHigh", "severity": "critical", "agent": "budget"},
        {"alertname": "CircuitBreakerOpenTooLong", "severity": "warning", "agent": "budget"},
        # A pair that is muted, so the state compared below is one the inhibitor has seen.
        {"alertname": "MemoryCritical", "severity": "critical", "family": "memory"},
        {"alertname": "MemoryHigh", "severity": "warning", "family": "memory"},
    )
    expected = {
        "ErsDown": False,
        "AgentErrorRatioHigh": False,
        "CircuitBreakerOpenTooLong": False,
        "MemoryCritical": False,
        "MemoryHigh": True,
    }
    assert wait_for_inhibition(alertmanager, expected) == expected


def test_inhibition_rules_require_a_family_on_both_sides() -> None:
    rules = load_yaml(ALERTMANAGER_CONFIG)["inhibit_rules"]
    family_rule = next(rule for rule in rules if "equal" in rule)
    assert family_rule["equal"] == ["family", "agent", "component"]
    assert 'family=~".+"' in family_rule["source_matchers"]
    assert 'family=~".+"' in family_rule["target_matchers"]
