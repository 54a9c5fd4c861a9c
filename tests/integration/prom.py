"""Real Prometheus and Alertmanager as child processes for integration tests.

Each runs on a free loopback port with its configuration, rules and storage in a work
folder, and is stopped by the caller (``stop()`` in a ``finally``)::

    prom = start_prometheus(tmp_path / "prom", [ers.url], [RULES])
    try:
        prom.wait_for(lambda: prom.query('up{job="ers"} == 1'), timeout=10)
    finally:
        prom.stop()
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import yaml

from tests.conftest import free_port

T = TypeVar("T")

READY_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 5.0


class PrometheusQueryError(RuntimeError):
    """Prometheus refused or failed a query; the message carries its error text."""


@dataclass(frozen=True)
class Sample:
    """One element of a query result: a scalar result is a sample without labels."""

    labels: dict[str, str]
    value: float

    @property
    def is_nan(self) -> bool:
        return math.isnan(self.value)


@dataclass
class ChildProcess:
    """A program serving HTTP on loopback, with its output in a log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        return response.json()

    def wait_for(self, predicate: Callable[[], T], timeout: float, interval: float = 0.25) -> T:
        """Poll ``predicate`` until it returns something truthy and return that; raise
        TimeoutError with the last value after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met in {timeout:g} s; last value: {value!r}")
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log()}"
                )
            time.sleep(interval)

    def _wait_ready(self) -> None:
        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            self.wait_for(ready, READY_TIMEOUT_S, interval=0.1)
        except TimeoutError:
            self.stop()
            raise TimeoutError(
                f"{self.name} was not ready in {READY_TIMEOUT_S:g} s:\n{self.log()}"
            ) from None
        except BaseException:
            self.stop()
            raise


C = TypeVar("C", bound=ChildProcess)


@dataclass
class PromProcess(ChildProcess):
    def query(self, expr: str) -> list[Sample]:
        """Evaluate ``expr`` now through /api/v1/query: the vector's samples, a scalar as
        one unlabelled sample, or [] for an empty result."""
        response = httpx.get(
            f"{self.url}/api/v1/query", params={"query": expr}, timeout=HTTP_TIMEOUT_S
        )
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusQueryError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] in ("scalar", "string"):
            return [Sample({}, float(data["result"][1]))]
        if data["resultType"] == "matrix":
            raise PrometheusQueryError(f"{expr!r} is a range vector; query an instant vector")
        return [Sample(item["metric"], float(item["value"][1])) for item in data["result"]]

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts as Prometheus holds them (/api/v1/alerts)."""
        return self.get("/api/v1/alerts")["data"]["alerts"]

    def targets(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/targets")["data"]["activeTargets"]


@dataclass
class AmProcess(ChildProcess):
    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager has received and not yet expired (/api/v2/alerts)."""
        return self.get("/api/v2/alerts")


def _binary(*names: str, package: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError(f"{names[0]} is not installed: install the Debian package {package}")


def _host_port(url: str) -> tuple[str, str]:
    """(host:port, path) of an http URL, as Prometheus's static_configs want them."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise ValueError(f"expected http://host:port[/path], got {url!r}")
    return f"{parts.hostname}:{parts.port}", parts.path


def _spawn(name: str, argv: list[str], workdir: Path, port: int, kind: type[C]) -> C:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv, cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    child = kind(name, f"http://127.0.0.1:{port}", process, log_path)
    child._wait_ready()
    return child


def start_prometheus(
    workdir: Path,
    scrape_targets: Sequence[str],
    rule_files: Sequence[Path] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    alertmanager_url: str | None = None,
    job: str = "ers",
) -> PromProcess:
    """Start Prometheus scraping ``scrape_targets`` (URLs such as ``http://127.0.0.1:8000``,
    metrics at /metrics) as job ``job``, with copies of ``rule_files`` loaded, and wait until
    it is ready. Targets need not be up yet: Prometheus keeps trying every interval."""
    binary = _binary("prometheus", package="prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    rule_names = []
    for index, rule_file in enumerate(rule_files):
        # Prefixed so that two rule files with one name do not overwrite each other.
        name = f"{index}-{rule_file.name}"
        shutil.copyfile(rule_file, workdir / name)
        rule_names.append(name)
    targets = [_host_port(url)[0] for url in scrape_targets]
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": rule_names,
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": targets}],
            }
        ],
    }
    if alertmanager_url is not None:
        address, path = _host_port(alertmanager_url)
        config["alerting"] = {
            "alertmanagers": [
                {"path_prefix": path or "/", "static_configs": [{"targets": [address]}]}
            ]
        }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    argv = [
        binary,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    return _spawn("prometheus", argv, workdir, port, PromProcess)


def start_alertmanager(workdir: Path, config_text: str) -> AmProcess:
    """Start Alertmanager with ``config_text`` as its configuration, clustering off, and wait
    until it is ready. Give its ``url`` to start_prometheus(alertmanager_url=...)."""
    binary = _binary("prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "alertmanager.yml").write_text(config_text)
    port = free_port()
    argv = [
        binary,
        f"--config.file={workdir / 'alertmanager.yml'}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        # An empty cluster address turns gossip off: no second port, no peers to wait for.
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    return _spawn("alertmanager", argv, workdir, port, AmProcess)
