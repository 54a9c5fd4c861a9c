"""The builder's dashboards type-check as `Dashboard` of @grafana/schema, the published
TypeScript schema of the Grafana release compose runs (tests/grafana/schema/package.json pins
both). `npm ci` installs it from the committed package-lock.json on first use; without node
and npm, or without the npm registry, the tests skip and say why."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
build = importlib.import_module("grafana.build")

SCHEMA = Path(__file__).resolve().parent / "schema"
GENERATED = SCHEMA / "generated"
# Written after a successful `npm ci`, so a later run reinstalls only when the lock changed.
STAMP = SCHEMA / "node_modules" / ".ers-lock-sha256"
INSTALL_TIMEOUT_S = 300
TSC_TIMEOUT_S = 120
# How npm reports a registry it cannot reach (DNS, refused, timed out, offline).
UNREACHABLE = re.compile(
    r"ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|"
    r"network request to|request to \S+ failed|ENOTCACHED|offline"
)


def lock_digest() -> str:
    return hashlib.sha256((SCHEMA / "package-lock.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tsc() -> list[str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed; the dashboard schema check needs both")
    if not STAMP.is_file() or STAMP.read_text() != lock_digest():
        result = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=SCHEMA,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            output = result.stdout + result.stderr
            if UNREACHABLE.search(output):
                pytest.skip(f"npm ci could not reach the npm registry:\n{output[-1500:]}")
            pytest.fail(f"npm ci failed:\n{output[-3000:]}")
        STAMP.write_text(lock_digest())
    return [node, str(SCHEMA / "node_modules" / "typescript" / "bin" / "tsc")]


def write_checks(boards: dict[str, str]) -> None:
    """One TypeScript module per dashboard JSON, the JSON checked with `satisfies`, which
    also rejects a property the schema does not know."""
    shutil.rmtree(GENERATED, ignore_errors=True)
    GENERATED.mkdir()
    for name, text in boards.items():
        module = (
            "import type { Dashboard } from '@grafana/schema';\n"
            "import type { Json } from '../json';\n\n"
            f"export const dashboard = (\n{text}) satisfies Json<Dashboard>;\n"
        )
        (GENERATED / f"{name}.ts").write_text(module, encoding="utf-8")


def run_tsc(tsc: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tsc, "--project", str(SCHEMA / "tsconfig.json")],
        cwd=SCHEMA,
        capture_output=True,
        text=True,
        timeout=TSC_TIMEOUT_S,
        check=False,
    )


def built_dashboards() -> dict[str, str]:
    prefix = f"{build.DASHBOARDS_DIR}/"
    return {
        rel.removeprefix(prefix).removesuffix(".json"): text
        for rel, text in build.rendered_files().items()
        if rel.startswith(prefix)
    }


@pytest.fixture
def clean_generated() -> Iterator[None]:
    yield
    shutil.rmtree(GENERATED, ignore_errors=True)


@pytest.mark.integration
def test_every_built_dashboard_type_checks_as_a_grafana_dashboard(
    tsc: list[str], clean_generated: None
) -> None:
    boards = built_dashboards()
    assert len(boards) == 4
    write_checks(boards)
    result = run_tsc(tsc)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_the_check_rejects_a_wrong_enum_value_and_an_unknown_property(
    tsc: list[str], clean_generated: None
) -> None:
    name, text = next(iter(built_dashboards().items()))
    board = json.loads(text)
    board["panels"][0]["fieldConfig"]["defaults"]["thresholds"]["mode"] = "absolut"
    board["graphTooltipp"] = 1
    write_checks({name: json.dumps(board, indent=2)})
    result = run_tsc(tsc)
    assert result.returncode != 0
    assert '"absolut"' in result.stdout or "graphTooltipp" in result.stdout, result.stdout
    # tsc reports the first incompatibility of an object literal; fix it to see the second.
    board["panels"][0]["fieldConfig"]["defaults"]["thresholds"]["mode"] = "absolute"
    write_checks({name: json.dumps(board, indent=2)})
    result = run_tsc(tsc)
    assert result.returncode != 0
    assert "graphTooltipp" in result.stdout, result.stdout
