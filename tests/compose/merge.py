"""Compose files merged the way ``docker compose -f a.yaml -f b.yaml`` merges them, so that
tests see the services the fleet actually runs (no Docker engine here).

The rules, from the Compose specification's "Merge" section:
- a mapping merges key by key, recursively;
- a sequence is appended to, except ``command``, ``entrypoint`` and ``healthcheck.test``,
  which the later file replaces;
- ``volumes``, ``secrets`` and ``configs`` of a service are unique by their target path,
  ``ports`` by their whole definition: a later entry with the same key replaces the earlier;
- ``environment`` (a list of ``KEY=value`` or a mapping) merges by variable, ``networks`` and
  ``depends_on`` (a list or a mapping) by name;
- ``!reset`` removes a value, ``!override`` replaces it instead of merging.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class Reset:
    """``!reset``: the later file removes the value."""


class Override:
    """``!override value``: the later file replaces the value instead of merging."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    pass


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    return Reset()


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    return Override(loader.construct_scalar(node))  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _override)

REPLACED = {"command", "entrypoint"}


def load(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # noqa: S506 (a SafeLoader)


def _environment(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    pairs = (item.split("=", 1) for item in value)
    return {pair[0]: pair[1] if len(pair) > 1 else None for pair in pairs}


def _by_name(value: Any, default: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    return {name: default for name in value}


def _mount_target(entry: Any) -> str:
    if isinstance(entry, dict):
        return str(entry["target"])
    parts = str(entry).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _secret_target(entry: Any) -> str:
    target = entry.get("target", entry["source"]) if isinstance(entry, dict) else entry
    return target if target.startswith("/") else f"/run/secrets/{target}"


def _unique(base: list[Any], later: list[Any], key: Any) -> list[Any]:
    merged = {key(entry): entry for entry in base}
    for entry in later:
        merged[key(entry)] = entry
    return list(merged.values())


def merge_service(base: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in later.items():
        if isinstance(value, Reset):
            merged.pop(key, None)
        elif isinstance(value, Override):
            merged[key] = value.value
        elif key not in merged or key in REPLACED:
            merged[key] = value
        elif key == "environment":
            merged[key] = {**_environment(merged[key]), **_environment(value)}
        elif key == "networks":
            merged[key] = {**_by_name(merged[key], None), **_by_name(value, None)}
        elif key == "depends_on":
            started = {"condition": "service_started"}
            merged[key] = {**_by_name(merged[key], started), **_by_name(value, started)}
        elif key == "volumes":
            merged[key] = _unique(merged[key], value, _mount_target)
        elif key in ("secrets", "configs"):
            merged[key] = _unique(merged[key], value, _secret_target)
        elif key == "ports":
            merged[key] = _unique(merged[key], value, str)
        elif key == "healthcheck":
            merged[key] = {**merged[key], **value}  # `test` is replaced, not appended
        else:
            merged[key] = merge_value(merged[key], value)
    return merged


def merge_value(base: Any, later: Any) -> Any:
    if isinstance(later, Reset):
        return None
    if isinstance(later, Override):
        return later.value
    if isinstance(base, dict) and isinstance(later, dict):
        merged = dict(base)
        for key, value in later.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            else:
                merged[key] = merge_value(merged[key], value) if key in merged else value
        return merged
    if isinstance(base, list) and isinstance(later, list):
        return [*base, *later]
    return later


def merge(base: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    merged = {key: value for key, value in base.items() if key != "services"}
    merged = merge_value(merged, {k: v for k, v in later.items() if k != "services"})
    services = dict(base.get("services", {}))
    for name, service in later.get("services", {}).items():
        services[name] = merge_service(services[name], service) if name in services else service
    merged["services"] = services
    return merged


def networks_of(service: dict[str, Any]) -> set[str]:
    """The networks a service joins; compose puts one with none on ``default``."""
    return set(_by_name(service.get("networks", ["default"]), None))


def environment_of(service: dict[str, Any]) -> dict[str, Any]:
    return _environment(service.get("environment", {}))


def secrets_of(service: dict[str, Any]) -> set[str]:
    """The paths where the service's secrets are mounted."""
    return {_secret_target(entry) for entry in service.get("secrets", [])}


def enabled(compose: dict[str, Any], profiles: set[str]) -> dict[str, dict[str, Any]]:
    """The services ``docker compose --profile ... up`` starts."""
    return {
        name: service
        for name, service in compose["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & profiles
    }


def mounted_file(root: Path, service: dict[str, Any], path: str) -> Path | None:
    """The host file a container sees at ``path``: the bind mount with the deepest target
    that holds it (Docker mounts parents first, so a deeper mount covers a shallower one)."""
    best: tuple[int, Path] | None = None
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        if not source.startswith((".", "/")):
            continue
        target_path = Path(target)
        inside = Path(path) == target_path or target_path in Path(path).parents
        if inside and (best is None or len(target_path.parts) > best[0]):
            relative = Path(path).relative_to(target_path)
            best = (len(target_path.parts), root / source / relative)
    return best[1] if best else None
