"""The Grafana builder's output is what the repository commits, its PromQL is valid, and the
provisioning files agree with each other and with Prometheus."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# grafana/ is a tool of the repository, not part of the installed package.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
build = importlib.import_module("grafana.build")
dashboard_queries = importlib.import_module("tests.grafana.queries").dashboard_queries
NEW_AFTER = importlib.import_module("grafana.panels").NEW_AFTER

DASHBOARD_UIDS = {"ers-system-health", "ers-agents", "ers-incidents", "ers-backups"}
PROMTOOL_TIMEOUT_S = 60
PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


def committed_dashboards() -> list[dict[str, Any]]:
    paths = sorted((ROOT / build.DASHBOARDS_DIR).glob("*.json"))
    return [json.loads(path.read_text(encoding="utf-8")) for path in paths]


def datasources() -> dict[str, dict[str, Any]]:
    text = (ROOT / build.DATASOURCES_FILE).read_text(encoding="utf-8")
    return {source["type"]: source for source in yaml.safe_load(text)["datasources"]}


def walk(value: Any) -> Any:
    """Every dict and string inside a JSON value."""
    yield value
    children = value.values() if isinstance(value, dict) else value
    if isinstance(value, dict | list):
        for child in children:
            yield from walk(child)


def test_committed_files_are_what_the_builder_writes(tmp_path: Path) -> None:
    written = build.write(tmp_path)
    assert set(written) == set(build.rendered_files())
    for rel in written:
        committed = ROOT / rel
        assert committed.is_file(), f"{rel} is not committed; run python -m grafana.build"
        assert committed.read_text(encoding="utf-8") == (tmp_path / rel).read_text(
            encoding="utf-8"
        ), f"{rel} differs from the builder; run python -m grafana.build"
    assert build.differing(ROOT) == []


def test_check_mode_lists_the_files_that_differ(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "grafana.build", "--root", str(tmp_path), *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert run().returncode == 0
    assert run("--check").returncode == 0
    edited = tmp_path / build.DASHBOARDS_DIR / "ers-backups.json"
    edited.write_text(edited.read_text(encoding="utf-8") + " ", encoding="utf-8")
    (tmp_path / build.DASHBOARDS_DIR / "old.json").write_text("{}", encoding="utf-8")
    result = run("--check")
    assert result.returncode == 1
    assert "grafana/dashboards/ers-backups.json" in result.stdout
    assert "grafana/dashboards/old.json" in result.stdout
    assert "ers-agents.json" not in result.stdout


def test_dashboards_have_fixed_unique_uids_and_ers_titles() -> None:
    boards = committed_dashboards()
    uids = [board["uid"] for board in boards]
    assert sorted(uids) == sorted(DASHBOARD_UIDS)
    for board in boards:
        assert board["title"].startswith("ERS / "), board["title"]
        assert (ROOT / build.DASHBOARDS_DIR / f"{board['uid']}.json").is_file()


def test_panels_fit_the_grid_without_overlapping() -> None:
    for board in committed_dashboards():
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (board["uid"], panel["title"])
            area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                    for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
            assert not cells & area, f"{board['uid']}: {panel['title']} overlaps another panel"
            cells |= area
        assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_dashboard_queries_cover_every_prometheus_target() -> None:
    exprs = [
        target["expr"]
        for board in committed_dashboards()
        for panel in board["panels"]
        for target in panel["targets"]
        if target["datasource"]["uid"] == "ers-prometheus"
    ]
    queries = dashboard_queries()
    assert len(queries) == len(exprs) > 40
    assert {uid for uid, _, _ in queries} == DASHBOARD_UIDS
    assert all("$" not in expr for _, _, expr in queries)


def test_range_selectors_follow_grafana_intervals() -> None:
    """Rates use $__rate_interval, totals $__range; only the 30-day error budget is fixed, and
    the hour before a window in which a series unseen is new in it."""
    for uid, title, _ in dashboard_queries():
        board = next(b for b in committed_dashboards() if b["uid"] == uid)
        panel = next(p for p in board["panels"] if p["title"] == title)
        for target in panel["targets"]:
            # Strings left out: a label matcher's regex may hold a class such as [^.].
            outside_strings = PROMQL_STRING.sub('""', target["expr"])
            for window in re.findall(r"\[([^\]]+)\]", outside_strings):
                allowed = {"$__rate_interval", "$__range", "30d", NEW_AFTER}
                assert window in allowed, (uid, title, window)


def test_every_promql_expression_is_valid(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    labelled = [(f"{uid} / {title}", expr) for uid, title, expr in dashboard_queries()]
    tempo = datasources()["tempo"]["jsonData"]["tracesToMetrics"]
    for query in tempo["queries"]:
        # Grafana fills $__tags from the span; unescape the provisioning file's $$ first.
        expr = query["query"].replace("$$", "$").replace("$__tags", 'agent="router"')
        labelled.append((f"Tempo tracesToMetrics / {query['name']}", expr))
    rules = [{"record": f"ers_dashboard:query_{i}", "expr": e} for i, (_, e) in enumerate(labelled)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
    )
    where = "\n".join(f"query_{i}: {name}: {expr}" for i, (name, expr) in enumerate(labelled))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{where}"


def test_provisioning_placeholders_are_escaped() -> None:
    for rel in (build.DATASOURCES_FILE, build.PROVIDER_FILE):
        for number, line in enumerate((ROOT / rel).read_text().splitlines(), start=1):
            assert "$" not in line.replace("$$", ""), f"{rel}:{number}: unescaped $: {line}"
    text = (ROOT / build.DATASOURCES_FILE).read_text()
    assert "$${__value.raw}" in text
    assert "{$$__tags}" in text


def test_dashboard_json_placeholders_are_not_escaped() -> None:
    incidents = next(b for b in committed_dashboards() if b["uid"] == "ers-incidents")
    traces = next(p for p in incidents["panels"] if p["datasource"]["uid"] == "ers-tempo")
    assert traces["targets"][0]["query"] == "{ status = error }"
    links = [
        link
        for override in traces["fieldConfig"]["overrides"]
        for prop in override["properties"]
        for link in prop["value"]
    ]
    assert links[0]["internal"]["datasourceUid"] == "ers-tempo"
    assert links[0]["internal"]["query"]["query"] == "${__value.raw}"
    for board in committed_dashboards():
        assert "$${" not in json.dumps(board)


def test_datasource_uids_point_at_each_other() -> None:
    sources = datasources()
    prometheus, tempo = sources["prometheus"], sources["tempo"]
    assert prometheus["uid"] == "ers-prometheus"
    assert tempo["uid"] == "ers-tempo"
    assert sources["alertmanager"]["uid"] == "ers-alertmanager"
    assert sources["alertmanager"]["jsonData"]["implementation"] == "prometheus"
    (exemplar,) = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert exemplar == {**exemplar, "name": "traceID", "datasourceUid": tempo["uid"]}
    assert tempo["jsonData"]["tracesToMetrics"]["datasourceUid"] == prometheus["uid"]
    assert tempo["jsonData"]["serviceMap"]["datasourceUid"] == prometheus["uid"]


def test_dashboards_use_only_provisioned_datasources() -> None:
    uids = {source["uid"] for source in datasources().values()}
    for board in committed_dashboards():
        for node in walk(board):
            if isinstance(node, dict) and "uid" in node and "type" in node:
                assert node["uid"] in uids, (board["uid"], node)
            if isinstance(node, dict) and "datasourceUid" in node:
                assert node["datasourceUid"] in uids, (board["uid"], node)


def test_dashboard_provider_is_a_file_provider_in_a_fixed_folder() -> None:
    (provider,) = yaml.safe_load((ROOT / build.PROVIDER_FILE).read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["folderUid"] == "ers"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_time_interval_equals_the_scrape_interval() -> None:
    prometheus_yml = ROOT / "alerts" / "prometheus.yml"
    time_interval = datasources()["prometheus"]["jsonData"]["timeInterval"]
    assert time_interval == "15s"
    if not prometheus_yml.is_file():
        pytest.skip("alerts/prometheus.yml is not written yet; compared with 15s only")
    config = yaml.safe_load(prometheus_yml.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "ers")
    scrape = job.get("scrape_interval", config.get("global", {}).get("scrape_interval", "1m"))
    assert time_interval == scrape
