"""The whole alerting loop with the real programs: ERS (real uvicorn) fails and opens an
incident, Prometheus (scraping it with the shipped rules) fires AgentErrorRatioHigh,
Alertmanager (with the shipped routing) calls ERS back, ERS isolates the agent; after
healing, the resolved alert releases the breaker to half-open and mitigates the incident, a
trial call closes the breaker and resolves the incident, and the system is back to normal
with health 200 — no step by hand, each step on the incident's timeline with who took it.

Only timing fields are rewritten in copies of the shipped files (scrape and evaluation
intervals, ``for:``, range windows, group_wait/group_interval), plus the addresses and the
token path that point them at this test's processes.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import start_ers
from tests.integration.prom import start_alertmanager, start_prometheus

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "alert-loop-token-5d2e"
NEVER_TRIP = {"failure_threshold": 10**9, "sliding_window_size": 10**6, "minimum_calls": 10**6}


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


def test_fault_fires_alert_that_isolates_then_resolution_recovers_the_incident(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "alert.token"
    token_file.write_text(TOKEN)
    ers = start_ers(
        tmp_path / "ers",
        env={
            "ERS_ALERT_TOKEN_FILE": str(token_file),
            # The loop under test is the fleet's: no local responder, no local breaker trip.
            "ERS_AUTO_RESPONSE_ENABLED": "false",
            "ERS_AGENT_BREAKERS": json.dumps({"workout": NEVER_TRIP}),
            "ERS_HEALTH_CHECK_INTERVAL_S": "1",
            "ERS_RECOVERY_CLEAN_S": "2",
        },
    )
    am = start_alertmanager(tmp_path / "am", fast_alertmanager(ers.url, token_file))
    prom = start_prometheus(
        tmp_path / "prom", [ers.url], [fast_rules(tmp_path)], alertmanager_url=am.url
    )
    stop_traffic = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=ers.url, timeout=10) as client:
            deadline = time.monotonic() + 90
            while not stop_traffic.is_set() and time.monotonic() < deadline:
                client.post("/chat", json={"message": "make me a workout plan", "userId": "t"})
                time.sleep(0.05)

    try:
        with httpx.Client(base_url=ers.url, timeout=10) as http:

            def incidents() -> list[dict]:
                return http.get("/api/emergency/incidents?limit=100").json()["incidents"]

            def state() -> str:
                return http.get("/api/emergency/status").json()["systemState"]

            prom.wait_for(lambda: prom.query('up{job="ers"} == 1'), timeout=20)
            assert state() == "normal"
            onset = time.monotonic()
            http.post(
                "/api/emergency/simulate-error", json={"component": "workout", "errorType": "agent"}
            ).raise_for_status()
            sender = threading.Thread(target=traffic, daemon=True)
            sender.start()

            (incident,) = prom.wait_for(incidents, timeout=30)
            assert (incident["spanName"], incident["status"]) == ("agent.workout", "open")
            forced = prom.wait_for(
                lambda: (
                    (b := breaker(http))["state"] == "forced_open"
                    and b["forced"]["source"] == "alertmanager"
                    and b
                ),
                timeout=60,
            )
            loop_seconds = time.monotonic() - onset
            print(f"\nalert_loop_seconds={loop_seconds:.2f}")
            assert "AgentErrorRatioHigh" in forced["forced"]["reason"]
            assert state() == "degraded"
            stop_traffic.set()
            sender.join(timeout=15)

            # Heal; with no calls the error ratio has no data, the alert resolves, and the
            # resolved notification releases the breaker for a trial and mitigates the incident.
            http.delete("/api/emergency/simulate-error").raise_for_status()
            prom.wait_for(lambda: breaker(http)["state"] == "half_open", timeout=60)
            history = breaker(http)["history"]
            released = [e for e in history if (e["from"], e["to"]) == ("forced_open", "half_open")]
            assert released and released[-1]["source"] == "alertmanager"
            detail = prom.wait_for(
                lambda: (
                    (d := http.get(f"/api/emergency/incidents/{incident['id']}").json())["status"]
                    == "mitigated"
                    and d
                ),
                timeout=10,
            )
            fingerprint = next(
                e["data"]["fingerprint"]
                for e in detail["timeline"]
                if e["kind"] == "alert_received" and e["data"]["status"] == "resolved"
            )

            # The next chat is the half-open trial; it succeeds, the breaker closes and the
            # incident resolves: nobody resolves anything by hand.
            reply = http.post("/chat", json={"message": "make me a workout plan", "userId": "t"})
            assert reply.json()["emergency"] is False
            assert breaker(http)["state"] == "closed"
            detail = prom.wait_for(
                lambda: (
                    (d := http.get(f"/api/emergency/incidents/{incident['id']}").json())["status"]
                    == "resolved"
                    and d
                ),
                timeout=10,
            )
            prom.wait_for(lambda: state() == "normal", timeout=20)
            health = http.get("/api/emergency/health")
            assert health.status_code == 200 and health.json()["systemState"] == "normal"
            assert [i["id"] for i in incidents()] == [incident["id"]]

            loop = steps(detail["timeline"])
            assert loop[0] == ("failure classified", "classifier")
            assert [step for step in loop if step[0] != "failure classified"] == [
                ("alert firing", "alertmanager"),
                ("isolate success", "alertmanager"),
                ("alert resolved", "alertmanager"),
                ("breaker released", "alertmanager"),
                ("open → mitigated", "alertmanager"),
                ("mitigated → resolved", "breaker:workout"),
            ], detail["timeline"]
            assert fingerprint in detail["timeline"][-1]["message"]
    except Exception:
        print("prometheus alerts:", json.dumps(prom.alerts())[:1500])
        print("alertmanager alerts:", json.dumps(am.alerts())[:1500])
        print("breaker:", json.dumps(breaker(httpx.Client(base_url=ers.url)))[:800])
        print("ers log:", ers.log()[-1500:])
        print("am log:", am.log()[-1500:])
        raise
    finally:
        stop_traffic.set()
        prom.stop()
        am.stop()
        assert ers.stop() == 0
