"""The compose merge the structural tests rely on follows the specification's rules."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.compose import merge


def parse(text: str) -> dict:
    return yaml.load(text, Loader=merge.ComposeLoader)  # noqa: S506 (a SafeLoader)


BASE = parse(
    """
services:
  a:
    command: [serve, --port, "8000"]
    environment: {KEEP: "1", CHANGE: old}
    networks: [default, backup]
    volumes: ["./x:/etc/app/x:ro", "data:/data"]
    secrets: [token]
    dns: [1.1.1.1]
    healthcheck: {test: [CMD, old], interval: 15s}
    depends_on: [db]
  db: {image: "db:1"}
"""
)
LATER = parse(
    """
services:
  a:
    command: [serve, --port, "9000"]
    environment: [CHANGE=new, ADD=2]
    networks: [database]
    volumes: ["./y:/etc/app/x:ro", "./z:/etc/app/z:ro"]
    secrets: [{source: token}, other]
    dns: [8.8.8.8]
    healthcheck: {test: [CMD, new]}
    depends_on: {cache: {condition: service_healthy}}
    ports: !reset []
  cache: {image: "cache:1"}
"""
)


def test_merge_follows_the_compose_rules() -> None:
    merged = merge.merge(BASE, LATER)["services"]
    a = merged["a"]
    assert a["command"] == ["serve", "--port", "9000"]  # replaced, not appended
    assert a["environment"] == {"KEEP": "1", "CHANGE": "new", "ADD": "2"}
    assert merge.networks_of(a) == {"default", "backup", "database"}
    assert a["volumes"] == ["./y:/etc/app/x:ro", "data:/data", "./z:/etc/app/z:ro"]
    assert merge.secrets_of(a) == {"/run/secrets/token", "/run/secrets/other"}
    assert a["dns"] == ["1.1.1.1", "8.8.8.8"]  # other sequences are appended
    assert a["healthcheck"] == {"test": ["CMD", "new"], "interval": "15s"}
    assert a["depends_on"] == {
        "db": {"condition": "service_started"},
        "cache": {"condition": "service_healthy"},
    }
    assert "ports" not in a
    assert set(merged) == {"a", "db", "cache"}


def test_a_deeper_bind_mount_covers_the_folder_mount_above_it(tmp_path: Path) -> None:
    service = {"volumes": ["./conf:/etc/app:ro", "./fleet.yml:/etc/app/targets/t.yml:ro"]}
    assert merge.mounted_file(tmp_path, service, "/etc/app/targets/t.yml") == tmp_path / "fleet.yml"
    assert merge.mounted_file(tmp_path, service, "/etc/app/a.yml") == tmp_path / "conf/a.yml"
    assert merge.mounted_file(tmp_path, service, "/etc/other") is None
