"""compose.yaml, checked structurally (no Docker engine here), against the files it mounts and
the Prometheus, Alertmanager, collector, Tempo and Grafana configs it wires together."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import uvicorn
import yaml

from backup.identity import RECORD_FILE_NAME
from service.cli.main import REQUEST_GRACE_S
from service.settings import Settings
from tests.balancer import LB_CONFIG, check_config
from tests.compose import merge
from tests.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = merge.load(ROOT / "compose.yaml")
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
SECRETS = {"ers_admin_token", "ers_alert_token", "ers_intake_token", "restic_password"}
SECRETS |= {"grafana_admin_password", "postgres_password", "ers_pgpass"}
SECRETS |= {"alert_people_url", "alert_watchdog_url"}
# The fleet profile (two replicas on PostgreSQL behind a load balancer) and the override file
# that moves the always-on `ers` onto the same database and points monitoring at every
# replica.
FLEET = {"postgres", "ers-2", "lb"}
FLEET_OVERRIDE = merge.load(ROOT / "compose.fleet.yaml")
# What each documented command starts: `docker compose up`, and
# `docker compose -f compose.yaml -f compose.fleet.yaml --profile fleet up`.
STACKS: dict[str, dict[str, dict[str, Any]]] = {
    "default": merge.enabled(COMPOSE, set()),
    "fleet": merge.enabled(merge.merge(COMPOSE, FLEET_OVERRIDE), {"fleet"}),
}
ERS_IMAGE = SERVICES["ers"]["image"]
# Written alongside this stack by others; while missing, their checks are expected failures.
PENDING = ("telemetry/otelcol.yaml", "alerts/")
# Services without a container health check, and why.
NO_HEALTHCHECK = {"otel-collector": "FROM scratch image: no shell or HTTP client to probe with"}
VERSION_TAG = re.compile(r"^[\w./-]+:v?\d+(\.\d+)+(-[\w.]+)?$")


def tempo_config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy/tempo.yaml").read_text())


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def service_ports() -> dict[str, set[int]]:
    """The ports each service listens on inside the compose network."""
    tempo = tempo_config()
    otlp = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    ers_command = SERVICES["ers"]["command"]
    ers_2_command = SERVICES["ers-2"]["command"]
    rest_command = SERVICES["rest-server"]["command"]
    listen = re.findall(r"^\s*listen\s+(\d+)\s*;", LB_CONFIG.read_text(), re.MULTILINE)
    return {
        "ers": {int(ers_command[ers_command.index("--port") + 1])},
        "ers-2": {int(ers_2_command[ers_2_command.index("--port") + 1])},
        "lb": {int(port) for port in listen},
        # The image's default: compose does not change it.
        "postgres": {5432},
        "rest-server": {port_of(rest_command[rest_command.index("--listen") + 1])},
        "tempo": {tempo["server"]["http_listen_port"], port_of(otlp)},
        # The images' defaults: compose does not change them.
        "prometheus": {9090},
        "alertmanager": {9093},
        "grafana": {3000},
        # OTLP in, health_check and its own metrics (otelcol.yaml).
        "otel-collector": {4317, 4318, 13133, 8888},
    }


def host_and_port(address: str) -> tuple[str, int | None]:
    parts = urlsplit(address if "://" in address else f"//{address}")
    return parts.hostname or "", parts.port


def assert_points_at_a_service(address: str, where: str) -> None:
    host, port = host_and_port(address)
    assert host in SERVICES, f"{where}: {address} names no compose service"
    assert port in service_ports()[host], f"{where}: {address}: {host} listens on another port"


def pending_file(rel: str) -> Path:
    """The path, or an expected failure while another engineer's file is not written yet."""
    path = ROOT / rel
    if not path.exists() and rel.startswith(PENDING):
        pytest.xfail(f"{rel} is not written yet")
    assert path.exists(), f"{rel} does not exist"
    return path


def bind_mounts(services: dict[str, dict[str, Any]] = SERVICES) -> list[tuple[str, str, str]]:
    mounts = []
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                mounts.append((name, str(Path(source)), target))
    return mounts


@pytest.mark.parametrize(("service", "source", "target"), bind_mounts(STACKS["fleet"]))
def test_every_bind_mounted_path_exists(service: str, source: str, target: str) -> None:
    pending_file(source)


def test_every_image_is_pinned_to_a_version() -> None:
    for name, service in SERVICES.items():
        image = service["image"]
        assert VERSION_TAG.match(image) and not image.endswith(":latest"), f"{name}: {image}"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert SERVICES["ers"]["image"] == f"ers:{version}"
    base = re.search(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base[1]), base


def test_every_service_has_a_healthcheck_or_a_reason() -> None:
    for name, service in SERVICES.items():
        check = service.get("healthcheck", {})
        if name in NO_HEALTHCHECK:
            assert check == {"disable": True}, name
        else:
            assert check.get("test") and not check.get("disable"), name


@pytest.mark.parametrize("stack", STACKS)
def test_dependencies_wait_for_healthy_services(stack: str) -> None:
    services = STACKS[stack]
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for target, condition in depends_on.items():
            assert target in services, f"{name} waits on {target}, not in the {stack} stack"
            assert condition == {"condition": "service_healthy"}, (name, target)
            assert target not in NO_HEALTHCHECK, f"{name} waits on {target}, never healthy"
            assert services[target]["healthcheck"]["test"], (name, target)


@pytest.mark.parametrize("stack", STACKS)
def test_the_collector_waits_for_no_service_that_sends_it_spans(stack: str) -> None:
    """ERS's exporter drops a batch it could not send for 10 s: a collector started only
    once ERS is healthy would lose ERS's first spans. Its own exporter to the intake queues
    and retries until ERS answers, so it needs ERS up no sooner."""
    waits_on = set(STACKS[stack]["otel-collector"].get("depends_on", {}))
    assert waits_on == {"tempo"}


def test_only_grafana_and_ers_publish_ports_on_loopback() -> None:
    published = {name: s["ports"] for name, s in SERVICES.items() if "ports" in s}
    assert published.pop("lb") == ["127.0.0.1:8080:8080"]  # the fleet profile's only one
    assert published == {"ers": ["127.0.0.1:8000:8000"], "grafana": ["127.0.0.1:3000:3000"]}


def test_secrets_are_files_under_deploy_secrets() -> None:
    defined = COMPOSE["secrets"]
    assert set(defined) == SECRETS
    for name, secret in defined.items():
        assert secret == {"file": f"./deploy/secrets/{name}"}, name
    readme = (ROOT / "deploy/secrets/README.md").read_text()
    for name, service in SERVICES.items():
        used = set(service.get("secrets", []))
        assert used <= SECRETS, name
        for key, value in service.get("environment", {}).items():
            if str(value).startswith("/run/secrets/"):
                assert value.removeprefix("/run/secrets/") in used, (name, key)
                assert key.endswith("_FILE"), (name, key)
            assert not re.search(r"TOKEN$|PASSWORD$", key), f"{name}: {key} in plain env"
        # A secret in an env file ends up in the container's environment, where any process
        # (and `docker inspect`) reads it: every service here can take a file instead.
        assert "env_file" not in service, f"{name}: use a compose secret, not an env file"
    for name in SECRETS:
        assert f"`{name}`" in readme, f"deploy/secrets/README.md does not explain {name}"


def test_secret_files_are_ignored_by_git() -> None:
    def ignored(rel: str) -> bool:
        command = ["git", "check-ignore", "--quiet", "--no-index", rel]
        return subprocess.run(command, cwd=ROOT, timeout=30).returncode == 0

    for rel in [f"deploy/secrets/{n}" for n in SECRETS]:
        assert ignored(rel), f"{rel} would be committed"
    assert not ignored("deploy/secrets/README.md")
    assert "deploy/" in (ROOT / ".dockerignore").read_text().split()


def test_ers_is_configured_for_production_inside_the_stack() -> None:
    ers = SERVICES["ers"]
    env = ers["environment"]
    assert env["ERS_ENV"] == "production"
    assert f"ers-data:{env['ERS_DATA_DIR']}" in ers["volumes"]
    assert env["ERS_RESTIC_REPOSITORY"].startswith("rest:")
    assert_points_at_a_service(env["ERS_RESTIC_REPOSITORY"].removeprefix("rest:"), "restic")
    assert_points_at_a_service(env["OTEL_EXPORTER_OTLP_ENDPOINT"], "ers OTLP exporter")
    assert ers["command"] == ["ers", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert set(ers["networks"]) >= set(SERVICES["rest-server"]["networks"])
    assert COMPOSE["networks"]["backup"]["internal"] is True


def test_dockerfile_builds_a_single_worker_non_root_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"apt-get install .*\brestic\b", text)
    assert "pip install ." in text
    user = re.search(r"^USER (\S+)", text, re.MULTILINE)
    assert user and user[1].split(":")[0] not in {"0", "root"}
    assert user[1].split(":")[0] in (ROOT / "deploy/secrets/README.md").read_text()
    assert re.search(r"^HEALTHCHECK .*\n?.*python.*/readyz", text, re.MULTILINE)
    assert 'CMD ["ers", "serve", "--host", "0.0.0.0", "--port", "8000"]' in text
    assert "--workers" not in text


def test_grafana_mounts_provisioning_and_reads_its_password_from_a_secret() -> None:
    grafana = SERVICES["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    provider_file = ROOT / "grafana/provisioning/dashboards/dashboards.yaml"
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    targets = {Path(source): target for name, source, target in bind_mounts() if name == "grafana"}
    assert targets[Path("grafana/dashboards")] == provider["options"]["path"]
    for kind in ("datasources", "dashboards"):
        assert targets[Path(f"grafana/provisioning/{kind}")] == f"/etc/grafana/provisioning/{kind}"


def test_grafana_datasources_point_at_compose_services() -> None:
    text = (ROOT / "grafana/provisioning/datasources/datasources.yaml").read_text()
    urls = {source["type"]: source["url"] for source in yaml.safe_load(text)["datasources"]}
    assert set(urls) == {"prometheus", "tempo", "alertmanager"}
    for kind, url in urls.items():
        assert host_and_port(url)[0] == kind
        assert_points_at_a_service(url, f"Grafana data source {kind}")


def test_prometheus_scrapes_ers_and_alerts_through_alertmanager() -> None:
    config = yaml.safe_load(pending_file("alerts/prometheus.yml").read_text())
    assert "./alerts:/etc/prometheus:ro" in SERVICES["prometheus"]["volumes"]
    assert "--enable-feature=exemplar-storage" in SERVICES["prometheus"]["command"]
    managers = config["alerting"]["alertmanagers"]
    assert [t for m in managers for c in m["static_configs"] for t in c["targets"]] == [
        "alertmanager:9093"
    ]
    for stack, services in STACKS.items():
        for job, targets in scrape_targets(services).items():
            for target in targets:
                if job != "prometheus":
                    assert_points_at_a_service(target, f"{stack}: Prometheus job {job}")
    for rule_file in config.get("rule_files", []):
        assert (ROOT / "alerts" / Path(rule_file).name).is_file(), rule_file


def container_file(services: dict[str, dict[str, Any]], service: str, path: str) -> Path:
    """The host file that ``service`` reads at ``path`` in this stack."""
    found = merge.mounted_file(ROOT, services[service], path)
    assert found is not None, f"{service}: nothing is mounted at {path}"
    assert found.is_file(), f"{service}: {path} is {found}, which does not exist"
    return found


def scrape_targets(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Every job's targets as Prometheus sees them in this stack, file_sd files included."""
    config_path = "/etc/prometheus/prometheus.yml"
    config = yaml.safe_load(container_file(services, "prometheus", config_path).read_text())
    targets: dict[str, list[str]] = {}
    for job in config["scrape_configs"]:
        found = [t for c in job.get("static_configs", []) for t in c["targets"]]
        for sd in job.get("file_sd_configs", []):
            for name in sd["files"]:
                path = str(Path(config_path).parent / name)
                groups = yaml.safe_load(container_file(services, "prometheus", path).read_text())
                found += [t for group in groups for t in group["targets"]]
        targets[job["job_name"]] = found
    return targets


def replicas(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s.get("image") == ERS_IMAGE}


def ers_port(service: dict[str, Any]) -> int:
    command = service["command"]
    return int(command[command.index("--port") + 1])


def replicas_behind(services: dict[str, dict[str, Any]], address: str) -> set[str]:
    """The replicas a request to ``address`` can reach: the one it names, or every replica
    the load balancer's upstream lists."""
    host, port = host_and_port(address)
    assert host in services, f"{address}: no such service in this stack"
    if host in replicas(services):
        assert port == ers_port(services[host]), address
        return {host}
    assert host == "lb" and port in service_ports()["lb"], f"{address} is no replica or balancer"
    return {host_and_port(upstream)[0] for upstream in lb_upstreams()}


@pytest.mark.parametrize("stack", STACKS)
def test_every_replica_is_a_scrape_target(stack: str) -> None:
    services = STACKS[stack]
    expected = {f"{name}:{ers_port(s)}" for name, s in replicas(services).items()}
    assert len(expected) == (2 if stack == "fleet" else 1)
    assert sorted(scrape_targets(services)["ers"]) == sorted(expected)


@pytest.mark.parametrize("stack", STACKS)
def test_the_watchers_are_scraped(stack: str) -> None:
    jobs = scrape_targets(STACKS[stack])
    watched = {host_and_port(t)[0] for name, ts in jobs.items() if name != "ers" for t in ts}
    assert {"alertmanager", "otel-collector", "tempo", "grafana"} <= watched
    # The collector's own metrics (the span metrics come from Tempo, remote-written).
    assert "otel-collector:8888" in {t for ts in jobs.values() for t in ts}


def alertmanager_config() -> dict[str, Any]:
    return yaml.safe_load(pending_file("alerts/alertmanager.yml").read_text())


def ers_webhooks(services: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(address, webhook) of every webhook that reaches ERS, its url_file read as mounted."""
    hooks = []
    for receiver in alertmanager_config()["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            if "url_file" in hook and hook["url_file"].startswith("/run/secrets/"):
                continue  # an outside address, from a secret (checked below)
            url = hook.get("url") or (
                container_file(services, "alertmanager", hook["url_file"]).read_text().strip()
            )
            if host_and_port(url)[0] in {*replicas(services), "lb"}:
                hooks.append((url, hook))
    return hooks


@pytest.mark.parametrize("stack", STACKS)
def test_alertmanager_posts_to_ers_with_the_mounted_token(stack: str) -> None:
    services = STACKS[stack]
    secrets = merge.secrets_of(services["alertmanager"])
    hooks = ers_webhooks(services)
    assert len(hooks) == 4, "one webhook a recovery action"
    for url, hook in hooks:
        assert urlsplit(url).path == "/api/emergency/alerts", url
        assert_points_at_a_service(url, "Alertmanager webhook")
        assert hook["http_config"]["authorization"]["credentials_file"] in secrets
    # The outside addresses are compose secrets the service mounts.
    outside = [
        hook["url_file"]
        for receiver in alertmanager_config()["receivers"]
        for hook in receiver.get("webhook_configs", [])
        if hook.get("url_file", "").startswith("/run/secrets/")
    ]
    assert outside and set(outside) <= secrets


def collector_targets(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each sending exporter's endpoint, ${env:...} filled in from the service's environment."""
    environment = merge.environment_of(services["otel-collector"])
    found = {}
    for name, exporter in collector_config()["exporters"].items():
        if name.split("/")[0] in LISTENING_EXPORTERS:
            continue
        endpoint = (exporter or {})["endpoint"]
        for variable in re.findall(r"\$\{env:(\w+)\}", endpoint):
            assert variable in environment, f"nothing provides {variable} to the collector"
            endpoint = endpoint.replace(f"${{env:{variable}}}", environment[variable])
        found[name] = endpoint
    return found


@pytest.mark.parametrize("stack", STACKS)
def test_webhook_and_error_spans_survive_the_loss_of_one_replica(stack: str) -> None:
    services = STACKS[stack]
    fleet = set(replicas(services))
    addresses = [url for url, _ in ers_webhooks(services)]
    addresses.append(collector_targets(services)["otlphttp/ers"])
    for address in addresses:
        reached = replicas_behind(services, address)
        assert reached <= fleet, address
        for lost in fleet:
            if len(fleet) > 1:
                assert reached - {lost}, f"{stack}: {address} is unreachable without {lost}"
    if stack == "fleet":
        # The balancer passes the webhook's and the intake's paths on (only /metrics stops).
        blocked = re.findall(r"location\s+=?\s*(\S+)\s*\{\s*return 4\d\d", LB_CONFIG.read_text())
        assert blocked == ["/metrics"], blocked


def collector_config() -> dict[str, Any]:
    assert SERVICES["otel-collector"]["volumes"] == [
        "./telemetry/otelcol.yaml:/etc/otelcol-contrib/config.yaml:ro"
    ]
    return yaml.safe_load(pending_file("telemetry/otelcol.yaml").read_text())


def test_the_collector_reads_the_intake_token_from_its_secret_file() -> None:
    config = collector_config()
    authenticator = config["exporters"]["otlphttp/ers"]["auth"]["authenticator"]
    token_file = config["extensions"][authenticator]["filename"]
    for services in STACKS.values():
        collector = services["otel-collector"]
        assert token_file in merge.secrets_of(collector)
        assert token_file in merge.secrets_of(services["ers"]), "not the token ERS checks"
    assert "${env:ERS_INTAKE_TOKEN}" not in yaml.safe_dump(config)


@pytest.mark.parametrize("stack", STACKS)
def test_the_collector_knows_ers_by_the_name_ers_gives_itself(stack: str) -> None:
    """The collector sends other services' error spans to ERS's intake and drops ERS's own
    by their service.name. Before, the filter said "ers" while ``service_name`` could say
    otherwise, and compose set OTEL_SERVICE_NAME, which ERS does not read: ERS's own
    failures came back as another service's and were counted twice."""
    config = collector_config()
    conditions = config["processors"]["filter/errors_from_others"]["traces"]["span"]
    assert 'resource.attributes["service.name"] == "${env:ERS_SERVICE_NAME}"' in conditions
    collector = merge.environment_of(STACKS[stack]["otel-collector"])
    for name, replica in replicas(STACKS[stack]).items():
        env = merge.environment_of(replica)
        assert "OTEL_SERVICE_NAME" not in env, f"{name}: ERS names itself by service_name"
        assert env["ERS_SERVICE_NAME"] == collector["ERS_SERVICE_NAME"], name
    assert "ERS_SERVICE_NAME" in {f"ERS_{field.upper()}" for field in Settings.model_fields}


# Exporters that listen (Prometheus scrapes them) rather than send to another service.
LISTENING_EXPORTERS = ("prometheus",)


@pytest.mark.parametrize("stack", STACKS)
def test_collector_exporters_point_at_compose_services(stack: str) -> None:
    config = collector_config()
    targets = collector_targets(STACKS[stack])
    for name, endpoint in targets.items():
        assert_points_at_a_service(endpoint, f"{stack}: collector exporter {name}")
    assert host_and_port(targets["otlp/tempo"])[0] == "tempo"
    referenced = set(re.findall(r"\$\{(?:env:)?(\w+)\}", yaml.safe_dump(config)))
    provided = set(merge.environment_of(STACKS[stack]["otel-collector"]))
    assert referenced <= provided, f"nothing provides {referenced - provided} to the collector"


def test_collector_pipelines_use_only_defined_components() -> None:
    config = collector_config()
    defined = {kind: set(config.get(kind) or {}) for kind in ("receivers", "processors")}
    defined["exporters"] = set(config.get("exporters") or {})
    connectors = set(config.get("connectors") or {})
    service = config["service"]
    for extension in service.get("extensions", []):
        assert extension in set(config.get("extensions") or {}), extension
    for pipeline, parts in service["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            allowed = defined[kind] | (connectors if kind != "processors" else set())
            for component in parts.get(kind, []):
                assert component in allowed, f"pipeline {pipeline} uses undefined {component}"
    otlp = config["receivers"]["otlp"]["protocols"]
    assert port_of(otlp["http"]["endpoint"]) == 4318
    assert_points_at_a_service(f"otel-collector:{port_of(otlp['grpc']['endpoint'])}", "otlp")


def test_tempo_stores_in_its_volume_and_listens_where_compose_expects() -> None:
    config = tempo_config()
    assert "tempo-data:/var/tempo" in SERVICES["tempo"]["volumes"]
    storage = config["storage"]["trace"]
    for path in (storage["wal"]["path"], storage["local"]["path"]):
        assert path.startswith("/var/tempo/"), path
    assert service_ports()["tempo"] == {3200, 4317}
    remote_write = config["metrics_generator"]["storage"]["remote_write"]
    assert [w["url"] for w in remote_write] == ["http://prometheus:9090/api/v1/write"]
    assert "--web.enable-remote-write-receiver" in SERVICES["prometheus"]["command"]


# The fleet profile: `docker compose -f compose.yaml -f compose.fleet.yaml --profile fleet up`.


def fleet_replicas() -> dict[str, dict[str, Any]]:
    """The replicas as compose.fleet.yaml merged into compose.yaml makes them."""
    return replicas(STACKS["fleet"])


def lb_upstreams() -> list[str]:
    """The ``server host:port`` lines of the upstream block that ``proxy_pass`` names."""
    text = LB_CONFIG.read_text()
    passes = set(re.findall(r"proxy_pass\s+http://([\w-]+)\s*;", text))
    assert len(passes) == 1, passes
    block = re.search(r"upstream\s+" + re.escape(passes.pop()) + r"\s*\{(.*?)\}", text, re.S)
    assert block, "proxy_pass names no upstream block"
    found = re.findall(r"^\s*server\s+([\w.-]+:\d+)", block[1], re.MULTILINE)
    return list(dict.fromkeys(found))  # each replica is listed twice (primary and backup)


def test_the_balancer_closes_an_idle_connection_before_the_replica_does() -> None:
    """uvicorn closes a keep-alive connection idle for ``timeout_keep_alive`` (its default,
    which `ers serve` keeps); nginx keeps one 60 s unless told. A request nginx sends on a
    connection the replica is closing is lost, and a lost POST is a 502 nginx never retries."""
    text = LB_CONFIG.read_text()
    block = re.search(r"upstream\s+ers_fleet\s*\{(.*?)\}", text, re.S)
    assert block
    idle = re.findall(r"^\s*keepalive_timeout\s+(\d+)s\s*;", block[1], re.MULTILINE)
    assert len(idle) == 1, "the upstream block sets no keepalive_timeout"
    assert int(idle[0]) < uvicorn.Config(app=None).timeout_keep_alive


def test_the_fleet_profile_adds_postgres_a_second_replica_and_a_load_balancer_only() -> None:
    profiled = {name for name, service in SERVICES.items() if "profiles" in service}
    assert profiled == FLEET
    for name in FLEET:
        assert SERVICES[name]["profiles"] == ["fleet"], name
    # The default stack never needs a fleet service, so `docker compose up` is unchanged.
    for name, service in SERVICES.items():
        if name not in FLEET:
            assert not set(service.get("depends_on", {})) & FLEET, name
    header = (ROOT / "compose.yaml").read_text().split("\nname:")[0]
    assert "-f compose.yaml -f compose.fleet.yaml --profile fleet up" in header


def test_the_fleet_override_moves_ers_onto_postgres_and_monitoring_onto_the_fleet() -> None:
    assert set(FLEET_OVERRIDE) == {"services"}
    services = FLEET_OVERRIDE["services"]
    assert set(services) == {"ers", "prometheus", "alertmanager", "otel-collector"}
    override = services["ers"]
    assert set(override) <= {"environment", "secrets", "networks", "depends_on"}
    assert set(override.get("secrets", [])) <= set(COMPOSE["secrets"])
    assert set(override.get("networks", [])) <= set(COMPOSE["networks"])
    # The others only change where they look: a mounted file, an address, what they wait on.
    assert set(services["prometheus"]) == set(services["alertmanager"]) == {"volumes"}
    assert set(services["otel-collector"]) == {"environment"}
    for name in ("prometheus", "alertmanager"):
        base_targets = {volume.split(":")[1] for volume in SERVICES[name]["volumes"]}
        for volume in services[name]["volumes"]:
            # In place of a file compose.yaml mounts, or over one inside a mounted folder: the
            # default stack has a file of its own there.
            target = volume.split(":")[1]
            assert target in base_targets or any(target.startswith(f"{t}/") for t in base_targets)
    assert (
        "-f compose.yaml -f compose.fleet.yaml --profile fleet up"
        in (ROOT / "compose.fleet.yaml").read_text()
    )


def test_fleet_replicas_and_the_balancer_wait_for_healthy_dependencies() -> None:
    for name, replica in fleet_replicas().items():
        assert replica["depends_on"]["postgres"] == {"condition": "service_healthy"}, name
    lb_depends = SERVICES["lb"]["depends_on"]
    assert lb_depends == {name: {"condition": "service_healthy"} for name in ("ers", "ers-2")}
    check = SERVICES["postgres"]["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"]
    # Over TCP: the image's first-run set-up server listens on the socket only.
    assert check[check.index("--host") + 1] == "127.0.0.1"


def test_postgres_keeps_its_data_in_a_named_volume_on_an_internal_network() -> None:
    postgres = SERVICES["postgres"]
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    assert "postgres-data" in COMPOSE["volumes"]
    assert "ports" not in postgres
    (network,) = postgres["networks"]
    assert COMPOSE["networks"][network]["internal"] is True
    for name, replica in fleet_replicas().items():
        assert network in replica["networks"], f"{name} cannot reach postgres"
    env = postgres["environment"]
    assert "POSTGRES_PASSWORD" not in env
    assert env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert postgres["secrets"] == ["postgres_password"]


def test_both_replicas_share_one_database_and_no_password_is_inline() -> None:
    urls = {name: r["environment"]["ERS_DATABASE_URL"] for name, r in fleet_replicas().items()}
    assert len(set(urls.values())) == 1, urls
    for name, url in urls.items():
        parts = urlsplit(url)
        assert parts.scheme == "postgresql" and parts.password is None, name
        assert_points_at_a_service(f"{parts.hostname}:{parts.port}", f"{name} database")
        env = SERVICES["postgres"]["environment"]
        assert (parts.username, parts.path) == (env["POSTGRES_USER"], f"/{env['POSTGRES_DB']}")
        query = dict(pair.split("=", 1) for pair in parts.query.split("&"))
        assert set(query) == {"passfile"}, name
        assert query["passfile"].removeprefix("/run/secrets/") in fleet_replicas()[name]["secrets"]
    # The documented pgpass line matches the URL (libpq matches host, port, database, user);
    # its database is any, for the scratch databases (tests/integration/test_documented_pgpass).
    readme = (ROOT / "deploy/secrets/README.md").read_text()
    parts = urlsplit(urls["ers"])
    assert f"{parts.hostname}:{parts.port}:*:{parts.username}:%s" in readme
    # Nothing in either file carries a credential in a URL or a plain password variable.
    for path in ("compose.yaml", "compose.fleet.yaml"):
        text = (ROOT / path).read_text()
        assert not re.search(r"://[^/\s@:]+:[^/\s@]+@", text), f"{path}: password in a URL"
        assert not re.search(r"PASSWORD\s*:", text), f"{path}: a password in plain environment"


def test_ers_2_is_built_and_run_like_ers() -> None:
    ers, ers_2 = fleet_replicas()["ers"], fleet_replicas()["ers-2"]
    for key in ("build", "image", "command", "healthcheck", "restart"):
        assert ers_2[key] == ers[key], key
    differ = {"ERS_RESTIC_REPOSITORY", "OTEL_RESOURCE_ATTRIBUTES"}
    same = {k: v for k, v in ers["environment"].items() if k not in differ}
    assert {k: v for k, v in ers_2["environment"].items() if k not in differ} == same
    assert set(ers_2["secrets"]) == set(ers["secrets"])
    assert merge.networks_of(ers_2) == merge.networks_of(ers)
    assert ers_2["deploy"] == ers["deploy"]
    assert ers_2["volumes"] == [f"ers-2-data:{ers_2['environment']['ERS_DATA_DIR']}"]
    assert "ers-2-data" in COMPOSE["volumes"]
    # Each replica is told apart in traces.
    instances = {r["environment"]["OTEL_RESOURCE_ATTRIBUTES"] for r in fleet_replicas().values()}
    assert len(instances) == 2


def test_what_a_replica_keeps_on_its_own_volume_is_said_as_it_is() -> None:
    """On PostgreSQL the audit trail lives beside the incidents in the shared schema
    (service/incidents/service.py); before, the comment on ers-2's volume said it was "still
    a SQLite file per replica", so an operator would look for it there."""
    text = (ROOT / "compose.yaml").read_text()
    found = re.search(r"((?:^\s*#.*\n)+)^\s*- ers-2-data:/data$", text, re.MULTILINE)
    assert found, "no comment on ers-2's volume"
    comment = " ".join(line.strip(" #") for line in found[1].splitlines())
    assert RECORD_FILE_NAME in comment, comment
    assert "SQLite" not in comment and "audit trail are all in PostgreSQL" in comment, comment


def test_the_load_balancer_config_names_both_replicas() -> None:
    upstreams = lb_upstreams()
    assert sorted(host_and_port(u)[0] for u in upstreams) == ["ers", "ers-2"]
    for upstream in upstreams:
        assert_points_at_a_service(upstream, "lb upstream")
    lb = SERVICES["lb"]
    assert lb["volumes"] == ["./compose/lb/nginx.conf:/etc/nginx/conf.d/default.conf:ro"]
    (published,) = lb["ports"]
    assert int(published.rsplit(":", 1)[1]) in service_ports()["lb"]
    probe = lb["healthcheck"]["test"][-1]
    assert host_and_port(probe)[1] in service_ports()["lb"], probe


# ---- Properties of each stack as `docker compose up` starts it ----------------------------


def network_reach(services: dict[str, dict[str, Any]], a: str, b: str) -> bool:
    return bool(merge.networks_of(services[a]) & merge.networks_of(services[b]))


@pytest.mark.parametrize("stack", STACKS)
def test_every_service_that_backs_up_reaches_the_repository(stack: str) -> None:
    services = STACKS[stack]
    backing_up = {
        name: merge.environment_of(s)["ERS_RESTIC_REPOSITORY"]
        for name, s in services.items()
        if "ERS_RESTIC_REPOSITORY" in merge.environment_of(s)
    }
    # Every replica: whichever holds the fleet's jobs lock runs the backups.
    assert set(backing_up) == set(replicas(services))
    for name, repository in backing_up.items():
        host, _ = host_and_port(repository.removeprefix("rest:"))
        assert network_reach(services, name, host), f"{stack}: {name} cannot reach {host}"
    for network in merge.networks_of(services["rest-server"]):
        assert COMPOSE["networks"][network]["internal"] is True


MEMORY_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def memory_bytes(value: str | int) -> int:
    found = re.fullmatch(r"(\d+)([bkmg])?b?", str(value).lower())
    assert found, f"{value!r} is no memory size"
    return int(found[1]) * MEMORY_UNITS[found[2] or "b"]


def memory_limit(service: dict[str, Any]) -> int | None:
    limit = service.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
    limit = limit or service.get("mem_limit")
    return memory_bytes(limit) if limit is not None else None


@pytest.mark.parametrize("stack", STACKS)
def test_every_long_running_service_has_a_memory_limit(stack: str) -> None:
    services = STACKS[stack]
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", f"{name} is not long-running?"
        limit = memory_limit(service)
        # Without a cgroup limit, what a process measures against is the host's memory.
        assert limit is not None, f"{stack}: {name} has no memory limit"
        assert limit >= 64 << 20, f"{name}: {limit} bytes cannot run it"


def test_the_collectors_memory_limiter_acts_below_its_container_limit() -> None:
    limiter = collector_config()["processors"]["memory_limiter"]
    assert "limit_percentage" not in limiter, "a share of what? say it in MiB"
    container = memory_limit(SERVICES["otel-collector"])
    assert container is not None
    hard = limiter["limit_mib"] << 20
    soft = hard - (limiter["spike_limit_mib"] << 20)
    assert 0 < soft < hard < container
    # Room for the Go runtime above the hard limit: at least a tenth of the container.
    assert container - hard >= container // 10


def test_no_replica_lowers_the_intake_body_limit_the_collector_batches_for() -> None:
    # tests/telemetry/test_otelcol_config.py bounds batch/ers under the default limit.
    for services in STACKS.values():
        for name, replica in replicas(services).items():
            assert "ERS_MAX_BODY_BYTES" not in merge.environment_of(replica), name


# ---- The load balancer -------------------------------------------------------------------


def lb_servers() -> list[dict[str, str]]:
    """Each ``server`` line of the upstream block: its address and parameters."""
    text = LB_CONFIG.read_text()
    block = re.search(r"upstream\s+[\w-]+\s*\{(.*?)\}", text, re.S)
    assert block
    servers = []
    for line in re.findall(r"^\s*server\s+([^;]+);", block[1], re.MULTILINE):
        address, *params = line.split()
        parsed = dict(p.split("=", 1) if "=" in p else (p, "") for p in params)
        servers.append({"address": address, **parsed})
    return servers


def lb_location(match: str) -> str:
    text = re.sub(r"#.*", "", LB_CONFIG.read_text())
    found = re.search(r"location\s+" + re.escape(match) + r"\s*\{(.*?)\}", text, re.S)
    assert found, f"no location {match}"
    return found[1]


def next_upstream(location: str) -> set[str]:
    found = re.search(r"proxy_next_upstream\s+([^;]+);", lb_location(location))
    assert found, f"{location}: no proxy_next_upstream"
    return set(found[1].split())


def test_the_balancer_takes_out_a_replica_that_fails_or_answers_503() -> None:
    primaries = [s for s in lb_servers() if "backup" not in s]
    assert sorted(s["address"] for s in primaries) == ["ers-2:8000", "ers:8000"]
    for server in primaries:
        # Failures here are what proxy_next_upstream names: 503 has to be among them.
        assert int(server["max_fails"]) >= 1 and server["fail_timeout"], server
    assert {"error", "timeout", "http_503"} <= next_upstream("/")
    # Chats and actions are POSTs that may have run: never sent twice.
    assert "non_idempotent" not in next_upstream("/")


def test_replicas_failing_together_still_answer_through_never_failed_backups() -> None:
    backups = [s for s in lb_servers() if "backup" in s]
    assert sorted(s["address"] for s in backups) == ["ers-2:8000", "ers:8000"]
    for server in backups:
        assert server["max_fails"] == "0", server


def test_only_the_ledgered_alert_webhook_is_retried_after_it_reached_a_replica() -> None:
    assert {"error", "timeout", "http_503", "non_idempotent"} <= next_upstream(
        "= /api/emergency/alerts"
    )
    assert "proxy_pass http://ers_fleet;" in lb_location("= /api/emergency/alerts")
    tries = re.search(r"proxy_next_upstream_tries\s+(\d+);", LB_CONFIG.read_text())
    assert tries and 1 < int(tries[1]) <= len(fleet_replicas())


def test_nginx_accepts_the_balancer_config(tmp_path: Path) -> None:
    """`nginx -t` by Debian's nginx, on the file as compose mounts it but for the lines
    `tests/balancer.py` rewrites (Docker's DNS: the image's nginx resolves service names,
    this one cannot). Before, this check was skipped wherever nginx was missing, and failed
    on the `resolve` parameter wherever it was not."""
    result = check_config(tmp_path, {"ers": free_port(), "ers-2": free_port()})
    assert result.returncode == 0, result.stderr


def test_the_balancer_re_resolves_the_replicas_names_as_docker_changes_them() -> None:
    """What the rewrite above leaves out, checked here: a recreated replica gets a new
    address, which nginx picks up only with Docker's resolver and `resolve` on each server
    (open-source nginx since 1.27.3, the version compose pins)."""
    text = LB_CONFIG.read_text()
    assert re.search(r"^resolver 127\.0\.0\.11 valid=\d+s", text, re.MULTILINE)
    assert all("resolve" in server for server in lb_servers())
    image = STACKS["fleet"]["lb"]["image"]
    version = tuple(int(part) for part in image.split(":")[1].split("-")[0].split("."))
    assert version >= (1, 27, 3), image


@pytest.mark.parametrize("stack", list(STACKS))
def test_a_replica_is_given_time_to_finish_its_shutdown(stack: str) -> None:
    """Docker sends SIGKILL 10 s after SIGTERM unless told otherwise; ERS waits for requests
    in flight and then takes its final backup, and a kill in between loses that backup."""
    shutdown_s = REQUEST_GRACE_S + Settings.model_fields["shutdown_backup_timeout_s"].default
    replicas = [s for s in STACKS[stack].values() if s.get("image") == ERS_IMAGE]
    assert replicas
    for replica in replicas:
        grace = replica.get("stop_grace_period", "10s")
        assert grace.endswith("s") and int(grace[:-1]) >= shutdown_s + 10, grace
