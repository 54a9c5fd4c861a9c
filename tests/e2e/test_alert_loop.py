"""The whole alerting loop with the real programs: ERS (real uvicorn) fails and opens an
incident, Prometheus (scraping it with the shipped rules) fires AgentErrorRatioHigh,
Alertmanager (with the shipped routing) calls ERS back, ERS isolates the agent; after
healing, the resolved alert releases the breaker, ERS's probe of the agent passes, the
breaker closes and the incident resolves, and the system is back to normal with health 200
— no step by hand and no chat needed, each step on the incident's timeline with who took it.

Only timing fields are rewritten in copies of the shipped files (scrape and evaluation
intervals, ``for:``, range windows, group_wait/group_interval), plus the addresses and the
token path that point them at this test's processes.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import yaml

from tests.conftest import start_ers
from tests.integration.prom import start_alertmanager, start_prometheus

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "alert-loop-token-5d2e"
T = TypeVar("T")
NEVER_TRIP = {"failure_threshold": 1000, "sliding_window_size": 10_000, "minimum_calls": 10_000}


def fast_rules(tmp_path: Path) -> Path:
    text = (ROOT / "alerts/rules.yml").read_text()
    text = re.sub(r"for: \d+[smh]", "for: 1s", text)
    text = text.replace("[5m]", "[10s]")
    path = tmp_path / "rules.yml"
    path.write_text(text)
    return path


def fast_alertmanager(ers_url: str, token_file: Path) -> str:
    config = yaml.safe_load((ROOT / "alerts/alertmanager.yml").read_text())
    for route in [config["route"], *config["route"].get("routes", [])]:
        for key in ("group_wait", "group_interval"):
            if key in route or route is config["route"]:
                route[key] = "1s"
    for receiver in config["receivers"]:
        # The ERS receivers share one list through a YAML anchor: decide by receiver name.
        for hook in receiver.get("webhook_configs", []):
            hook.pop("url_file", None)  # a URL of its own instead (and Debian's 0.25 has none)
            if receiver["name"].startswith("ers-"):
                hook["url"] = f"{ers_url}/api/emergency/alerts"
                hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
            else:
                hook["url"] = "http://127.0.0.1:9/people"  # nothing listens: logged, ignored
    return yaml.safe_dump(config)


def breaker(http: httpx.Client) -> dict:
    return http.get("/api/emergency/circuit-breakers/workout").json()


def steps(timeline: list[dict]) -> list[tuple[str, str]]:
    """Each step of the loop found on the timeline, as (step, who), in timeline order."""
    found = []
    for entry in timeline:
        kind, data, message = entry["kind"], entry["data"], entry["message"]
        if kind == "classified":
            step = "failure classified"
        elif kind == "alert_received":
            step = f"alert {data['status']}"
        elif kind == "action_finished" and data.get("action") == "isolate":
            step = f"isolate {data['result']}"
        elif kind == "note" and "released" in message:
            step = "breaker released"
        elif kind == "status_changed":
            step = message.split(":")[0]
        else:
            continue
        found.append((step, entry["who"]))
    return found


class Loop:
    """ERS, Alertmanager and Prometheus wired into one loop, with chat traffic on demand."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        token_file = tmp_path / "alert.token"
        token_file.write_text(TOKEN)
        self.ers_dir = tmp_path / "ers"
        self.ers_env = {
            "ERS_ALERT_TOKEN_FILE": str(token_file),
            # The loop under test is the fleet's: no local responder, no local breaker trip.
            "ERS_AUTO_RESPONSE_ENABLED": "false",
            "ERS_AGENT_BREAKERS": json.dumps({"workout": NEVER_TRIP}),
            "ERS_HEALTH_CHECK_INTERVAL_S": "1",
            "ERS_RECOVERY_CLEAN_S": "2",
            **env,
        }
        self.ers = start_ers(self.ers_dir, env=self.ers_env)
        self.am = start_alertmanager(tmp_path / "am", fast_alertmanager(self.ers.url, token_file))
        self.prom = start_prometheus(
            tmp_path / "prom", [self.ers.url], [fast_rules(tmp_path)], alertmanager_url=self.am.url
        )
        self.http = httpx.Client(base_url=self.ers.url, timeout=10)
        self._stop_traffic = threading.Event()
        self._sender: threading.Thread | None = None

    def restart(self, sig: int) -> None:
        """Stop ERS with ``sig`` and start it again on the same port and data directory."""
        port = int(self.ers.url.rsplit(":", 1)[1])
        self.ers.stop(sig)
        self.ers = start_ers(self.ers_dir, env=self.ers_env, port=port)

    def incidents(self) -> list[dict]:
        return self.http.get("/api/emergency/incidents?limit=100").json()["incidents"]

    def incident(self, incident_id: str) -> dict:
        return self.http.get(f"/api/emergency/incidents/{incident_id}").json()

    def state(self) -> str:
        return self.http.get("/api/emergency/status").json()["systemState"]

    def wait_for(self, predicate: Callable[[], T], timeout: float) -> T:
        return self.prom.wait_for(predicate, timeout=timeout)

    def wait_for_status(self, incident_id: str, status: str, timeout: float) -> dict:
        return self.wait_for(
            lambda: (found := self.incident(incident_id))["status"] == status and found, timeout
        )

    def fail(self, error_type: str) -> None:
        """Inject the fault into the workout agent and send chats to it until healed."""
        self.http.post(
            "/api/emergency/simulate-error", json={"component": "workout", "errorType": error_type}
        ).raise_for_status()
        self._sender = threading.Thread(target=self._traffic, daemon=True)
        self._sender.start()

    def heal(self) -> None:
        self._stop_traffic.set()
        if self._sender is not None:
            self._sender.join(timeout=15)
        self.http.delete("/api/emergency/simulate-error").raise_for_status()

    def _traffic(self) -> None:
        with httpx.Client(base_url=self.ers.url, timeout=10) as client:
            deadline = time.monotonic() + 90
            while not self._stop_traffic.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):  # ERS restarting
                    client.post("/chat", json={"message": "make me a workout plan", "userId": "t"})
                time.sleep(0.05)

    def isolated(self) -> dict:
        """The breaker once Alertmanager's isolate alert has forced it open."""
        return self.wait_for(
            lambda: (
                (b := breaker(self.http))["state"] == "forced_open"
                and b["forced"]["source"] == "alertmanager"
                and b
            ),
            timeout=60,
        )

    def released_and_probed(self) -> None:
        """Wait for the resolved alert to release the breaker and for ERS's probe of the
        healed agent to close it, both by alertmanager, with no chat sent meanwhile."""
        self.wait_for(lambda: breaker(self.http)["state"] == "closed", timeout=60)
        history = breaker(self.http)["history"]
        moves = [(e["from"], e["to"], e["source"]) for e in history][-2:]
        assert moves == [
            ("forced_open", "half_open", "alertmanager"),
            ("half_open", "closed", "alertmanager"),
        ], history

    def dump(self) -> None:
        print("prometheus alerts:", json.dumps(self.prom.alerts())[:1500])
        print("alertmanager alerts:", json.dumps(self.am.alerts())[:1500])
        print("breaker:", json.dumps(breaker(self.http))[:800])
        print("incidents:", json.dumps(self.incidents())[:2000])
        print("ers log:", self.ers.log()[-1500:])
        print("am log:", self.am.log()[-1500:])

    def stop(self) -> None:
        self._stop_traffic.set()
        self.http.close()
        self.prom.stop()
        self.am.stop()
        assert self.ers.stop() == 0


def test_fault_fires_alert_that_isolates_then_resolution_recovers_the_incident(
    loop: Loop,
) -> None:
    loop.wait_for(lambda: loop.prom.query('up{job="ers"} == 1'), timeout=20)
    assert loop.state() == "normal"
    onset = time.monotonic()
    loop.fail("agent")
    (incident,) = loop.wait_for(loop.incidents, timeout=30)
    assert (incident["spanName"], incident["status"]) == ("agent.workout", "open")
    forced = loop.isolated()
    print(f"\nalert_loop_seconds={time.monotonic() - onset:.2f}")
    assert "AgentErrorRatioHigh" in forced["forced"]["reason"]
    assert loop.state() == "degraded"

    # Heal; with no calls the error ratio has no data, the alert resolves, and the resolved
    # notification releases the breaker; the agent answers ERS's probe, the breaker closes
    # and the incident resolves: nobody resolves anything by hand, and no chat is needed.
    loop.heal()
    loop.released_and_probed()
    detail = loop.wait_for_status(incident["id"], "resolved", timeout=10)
    fingerprint = next(
        e["data"]["fingerprint"]
        for e in detail["timeline"]
        if e["kind"] == "alert_received" and e["data"]["status"] == "resolved"
    )
    loop.wait_for(lambda: loop.state() == "normal", timeout=20)
    health = loop.http.get("/api/emergency/health")
    assert health.status_code == 200 and health.json()["systemState"] == "normal"
    assert [i["id"] for i in loop.incidents()] == [incident["id"]]

    steps_taken = steps(detail["timeline"])
    assert steps_taken[0] == ("failure classified", "classifier")
    assert [step for step in steps_taken if step[0] != "failure classified"] == [
        ("alert firing", "alertmanager"),
        ("isolate success", "alertmanager"),
        ("open → mitigated", "alertmanager"),
        ("alert resolved", "alertmanager"),
        ("breaker released", "alertmanager"),
        ("mitigated → resolved", "alertmanager"),
    ], detail["timeline"]
    last = [e for e in detail["timeline"] if e["kind"] != "state_changed"][-1]
    assert fingerprint in last["message"], last


@pytest.mark.parametrize("loop_env", [{"ERS_INCIDENT_QUIET_PERIOD_S": "2"}])
def test_an_agents_alert_lands_on_its_network_failure_and_raises_no_emergency(
    loop: Loop,
) -> None:
    """A network failure is an incident of its own type, and the isolate alert lands on it
    all the same. It opened a critical incident of its own: emergency, health 503, and half
    an hour on CriticalIncidentUnresolved, which rolls the state back. After healing the
    incident resolves without a hand and without a chat, the state is normal, health 200,
    and the failure's is the only incident."""
    loop.wait_for(lambda: loop.prom.query('up{job="ers"} == 1'), timeout=20)
    loop.fail("network")
    (incident,) = loop.wait_for(loop.incidents, timeout=30)
    assert incident["classification"]["type"] == "network", incident
    loop.isolated()
    assert loop.state() == "degraded"
    detail = loop.incident(incident["id"])
    received = [e["data"]["alertname"] for e in detail["timeline"] if e["kind"] == "alert_received"]
    assert received == ["AgentErrorRatioHigh"], detail["timeline"]

    loop.heal()
    loop.released_and_probed()
    loop.wait_for_status(incident["id"], "resolved", timeout=10)
    loop.wait_for(lambda: loop.state() == "normal", timeout=20)
    health = loop.http.get("/api/emergency/health")
    assert health.status_code == 200 and health.json()["systemState"] == "normal"
    assert [i["id"] for i in loop.incidents()] == [incident["id"]], loop.incidents()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_an_ers_restart_between_firing_and_resolved_keeps_the_loop_whole(
    loop: Loop, sig: int
) -> None:
    """The isolation the alert made outlives the process, and the resolution Alertmanager
    sends to the new process releases it and, the healed agent answering ERS's probe,
    resolves the incident its firing landed on."""
    loop.wait_for(lambda: loop.prom.query('up{job="ers"} == 1'), timeout=20)
    loop.fail("agent")
    (incident,) = loop.wait_for(loop.incidents, timeout=30)
    loop.isolated()
    loop.restart(sig)
    held = breaker(loop.http)
    assert held["state"] == "forced_open" and held["forced"]["source"] == "alertmanager", held

    loop.heal()
    loop.released_and_probed()
    detail = loop.wait_for_status(incident["id"], "resolved", timeout=10)
    last = [e for e in detail["timeline"] if e["kind"] != "state_changed"][-1]
    assert (last["kind"], last["who"]) == ("status_changed", "alertmanager"), last
    assert [i["id"] for i in loop.incidents()] == [incident["id"]]
