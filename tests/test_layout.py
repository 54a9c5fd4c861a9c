"""The code's layout: each domain is one package of ``service/``, and imports run one way only.

``telemetry/`` (the span pipeline) and ``backup/`` (restic) know nothing of the service. Inside
``service/``, every package sits on a layer and imports only from the layers below it, so a
package can be read, tested and changed without the ones above it. The test reads every
import statement (function-level ones too), so an import that runs back up fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. Modules on the same line may not import each other.
LAYERS: list[set[str]] = [
    {"telemetry", "backup"},
    {"service.config_checks"},
    {"service.settings_errors"},
    {"service.errors", "service.settings", "service.tasks"},
    {"service.stores"},
    {"service.agents"},
    {"service.resilience"},
    {"service.chat"},
    {"service.incidents"},
    {"service.fleet"},
    {"service.backups"},
    {"service.health"},
    {"service.web"},
    {"service.cli"},
]
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str | None:
    """The layered unit a module belongs to: a top-level package, or one of ``service``'s
    packages or modules."""
    parts = module.split(".")
    if parts[0] in ("telemetry", "backup"):
        return parts[0]
    if parts[0] != "service" or len(parts) < 2:
        return None
    return f"service.{parts[1]}"


def imports(root: Path = ROOT) -> list[tuple[str, str, str]]:
    """(importing file, its unit, imported module) for every import in the product code."""
    found = []
    for top in ("service", "telemetry", "backup"):
        for path in sorted((root / top).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            unit = unit_of(module) or top
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                found += [(str(path.relative_to(root)), unit, name) for name in names]
    return found


def test_every_package_of_the_product_has_a_layer() -> None:
    units = {unit for _, unit, _ in imports()}
    assert units <= set(LAYER_OF), f"put these on a layer: {sorted(units - set(LAYER_OF))}"


def upward_imports(root: Path = ROOT) -> list[str]:
    upward = []
    for path, unit, name in imports(root):
        target = unit_of(name)
        if target is None or target == unit:
            continue
        if LAYER_OF[target] >= LAYER_OF[unit]:
            upward.append(f"{path} ({unit}) imports {name} ({target})")
    return upward


def test_no_import_runs_back_up() -> None:
    upward = upward_imports()
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("top", ["telemetry", "backup"])
def test_the_pipeline_and_the_backups_never_import_the_service(top: str) -> None:
    assert not [name for _, unit, name in imports() if unit == top and name.startswith("service")]


def test_service_has_no_flat_modules_beside_its_domains() -> None:
    flat = {p.name for p in (ROOT / "service").glob("*.py")}
    assert flat == {
        "__init__.py",
        "config_checks.py",
        "errors.py",
        "settings.py",
        "settings_errors.py",
        "tasks.py",
    }


def test_the_check_finds_an_upward_import(tmp_path: Path) -> None:
    incidents = tmp_path / "service" / "incidents"
    incidents.mkdir(parents=True)
    (incidents / "store.py").write_text("def f():\n    from service.web.app import app\n")
    (tmp_path / "telemetry").mkdir()
    (tmp_path / "telemetry" / "sink.py").write_text("from service.incidents import store\n")
    assert upward_imports(tmp_path) == [
        "service/incidents/store.py (service.incidents) imports service.web.app (service.web)",
        "telemetry/sink.py (telemetry) imports service.incidents (service.incidents)",
    ]
