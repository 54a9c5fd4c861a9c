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
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
SECRETS = {"ers_admin_token", "ers_alert_token", "ers_intake_token", "restic_password"}
SECRETS |= {"grafana_admin_password", "postgres_password", "ers_pgpass"}
# The fleet profile (two replicas on PostgreSQL behind a load balancer) and the override file
# that moves the always-on `ers` onto the same database.
FLEET = {"postgres", "ers-2", "lb"}
FLEET_OVERRIDE = yaml.safe_load((ROOT / "compose.fleet.yaml").read_text())
LB_CONFIG = ROOT / "compose/lb/nginx.conf"
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
        "otel-collector": {4317, 4318, 13133},
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


def bind_mounts() -> list[tuple[str, str, str]]:
    mounts = []
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                mounts.append((name, str(Path(source)), target))
    return mounts


@pytest.mark.parametrize(("service", "source", "target"), bind_mounts())
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


def test_dependencies_wait_for_healthy_services() -> None:
    for name, service in SERVICES.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for target, condition in depends_on.items():
            assert condition == {"condition": "service_healthy"}, (name, target)
            assert target not in NO_HEALTHCHECK, f"{name} waits on {target}, never healthy"
            assert SERVICES[target]["healthcheck"]["test"], (name, target)


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
        for env_file in service.get("env_file", []):
            assert env_file.startswith("deploy/secrets/"), (name, env_file)
            assert Path(env_file).name in readme
    for name in SECRETS:
        assert f"`{name}`" in readme, f"deploy/secrets/README.md does not explain {name}"


def test_secret_files_are_ignored_by_git() -> None:
    def ignored(rel: str) -> bool:
        command = ["git", "check-ignore", "--quiet", "--no-index", rel]
        return subprocess.run(command, cwd=ROOT, timeout=30).returncode == 0

    for rel in [f"deploy/secrets/{n}" for n in SECRETS] + ["deploy/secrets/otel-collector.env"]:
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
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    ers_targets = [t for c in jobs["ers"]["static_configs"] for t in c["targets"]]
    assert ers_targets == ["ers:8000"]
    managers = config["alerting"]["alertmanagers"]
    assert [t for m in managers for c in m["static_configs"] for t in c["targets"]] == [
        "alertmanager:9093"
    ]
    for target in ers_targets:
        assert_points_at_a_service(target, "Prometheus scrape target")
    for rule_file in config.get("rule_files", []):
        assert (ROOT / "alerts" / Path(rule_file).name).is_file(), rule_file


def test_alertmanager_posts_to_ers_with_the_mounted_token() -> None:
    config = yaml.safe_load(pending_file("alerts/alertmanager.yml").read_text())
    secrets = set(SERVICES["alertmanager"]["secrets"])
    ers_hooks = [
        hook
        for receiver in config["receivers"]
        for hook in receiver.get("webhook_configs", [])
        if host_and_port(hook["url"])[0] == "ers"
    ]
    assert ers_hooks, "no webhook reaches ERS"
    for hook in ers_hooks:
        assert_points_at_a_service(hook["url"], "Alertmanager webhook")
        token = hook["http_config"]["authorization"]["credentials_file"]
        assert token.removeprefix("/run/secrets/") in secrets, token


def collector_config() -> dict[str, Any]:
    assert SERVICES["otel-collector"]["volumes"] == [
        "./telemetry/otelcol.yaml:/etc/otelcol-contrib/config.yaml:ro"
    ]
    return yaml.safe_load(pending_file("telemetry/otelcol.yaml").read_text())


# Exporters that listen (Prometheus scrapes them) rather than send to another service.
LISTENING_EXPORTERS = ("prometheus",)


def test_collector_exporters_point_at_compose_services() -> None:
    config = collector_config()
    sending = {
        name: exporter
        for name, exporter in config["exporters"].items()
        if name.split("/")[0] not in LISTENING_EXPORTERS
    }
    for name, exporter in sending.items():
        for key, value in (exporter or {}).items():
            if key.endswith("endpoint"):
                assert_points_at_a_service(value, f"collector exporter {name}.{key}")
    exporter_hosts = {
        host_and_port(v)[0]
        for e in sending.values()
        for k, v in (e or {}).items()
        if k.endswith("endpoint")
    }
    assert {"tempo", "ers"} <= exporter_hosts
    referenced = set(re.findall(r"\$\{(?:env:)?(\w+)\}", yaml.safe_dump(config)))
    readme = (ROOT / "deploy/secrets/README.md").read_text()
    provided = set(SERVICES["otel-collector"].get("environment", {}))
    for variable in referenced - provided:
        assert f"{variable}=" in readme, f"nothing provides {variable} to the collector"


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


def fleet_ers() -> dict[str, Any]:
    """``ers`` as compose.fleet.yaml changes it (environment, secrets, networks and
    depends_on merge with compose.yaml's, as compose merges them)."""
    base, override = SERVICES["ers"], FLEET_OVERRIDE["services"]["ers"]
    return {
        **base,
        "environment": {**base["environment"], **override.get("environment", {})},
        "secrets": [*base["secrets"], *override.get("secrets", [])],
        "networks": [*base["networks"], *override.get("networks", [])],
        "depends_on": {**base.get("depends_on", {}), **override.get("depends_on", {})},
    }


def fleet_replicas() -> dict[str, dict[str, Any]]:
    return {"ers": fleet_ers(), "ers-2": SERVICES["ers-2"]}


def lb_upstreams() -> list[str]:
    """The ``server host:port`` lines of the upstream block that ``proxy_pass`` names."""
    text = LB_CONFIG.read_text()
    passes = set(re.findall(r"proxy_pass\s+http://([\w-]+)\s*;", text))
    assert len(passes) == 1, passes
    block = re.search(r"upstream\s+" + re.escape(passes.pop()) + r"\s*\{(.*?)\}", text, re.S)
    assert block, "proxy_pass names no upstream block"
    return re.findall(r"^\s*server\s+([\w.-]+:\d+)", block[1], re.MULTILINE)


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


def test_the_fleet_override_only_moves_ers_onto_postgres() -> None:
    assert set(FLEET_OVERRIDE) == {"services"}
    assert set(FLEET_OVERRIDE["services"]) == {"ers"}
    override = FLEET_OVERRIDE["services"]["ers"]
    assert set(override) <= {"environment", "secrets", "networks", "depends_on"}
    assert set(override.get("secrets", [])) <= set(COMPOSE["secrets"])
    assert set(override.get("networks", [])) <= set(COMPOSE["networks"])
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
    # The documented pgpass line matches the URL (libpq matches host, port, database, user).
    readme = (ROOT / "deploy/secrets/README.md").read_text()
    parts = urlsplit(urls["ers"])
    assert f"{parts.hostname}:{parts.port}:{parts.path[1:]}:{parts.username}:%s" in readme
    # Nothing in either file carries a credential in a URL or a plain password variable.
    for path in ("compose.yaml", "compose.fleet.yaml"):
        text = (ROOT / path).read_text()
        assert not re.search(r"://[^/\s@:]+:[^/\s@]+@", text), f"{path}: password in a URL"
        assert not re.search(r"PASSWORD\s*:", text), f"{path}: a password in plain environment"


def test_ers_2_is_built_and_run_like_ers() -> None:
    ers, ers_2 = fleet_ers(), SERVICES["ers-2"]
    for key in ("build", "image", "command", "healthcheck", "restart"):
        assert ers_2[key] == ers[key], key
    differ = {"ERS_RESTIC_REPOSITORY", "OTEL_RESOURCE_ATTRIBUTES"}
    same = {k: v for k, v in ers["environment"].items() if k not in differ}
    assert {k: v for k, v in ers_2["environment"].items() if k not in differ} == same
    assert set(ers_2["secrets"]) == set(ers["secrets"])
    assert ers_2["volumes"] == [f"ers-2-data:{ers_2['environment']['ERS_DATA_DIR']}"]
    assert "ers-2-data" in COMPOSE["volumes"]
    # Each replica is told apart in traces.
    instances = {r["environment"]["OTEL_RESOURCE_ATTRIBUTES"] for r in fleet_replicas().values()}
    assert len(instances) == 2


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
