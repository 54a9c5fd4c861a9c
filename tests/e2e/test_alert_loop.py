"""The whole alerting loop with the real programs: ERS (real uvicorn) fails, Prometheus
(scraping it with the shipped rules) fires AgentErrorRatioHigh, Alertmanager (with the
shipped routing) calls ERS back, ERS isolates the agent; after healing, the resolved alert
releases the breaker to half-open and a trial call closes it.

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


def test_fault_fires_alert_that_isolates_then_resolution_releases(tmp_path: Path) -> None:
    token_file = tmp_path / "alert.token"
    token_file.write_text(TOKEN)
    ers = start_ers(
        tmp_path / "ers",
        env={
            "ERS_ALERT_TOKEN_FILE": str(token_file),
            # The loop under test is the fleet's: no local responder, no local breaker trip.
            "ERS_AUTO_RESPONSE_ENABLED": "false",
            "ERS_AGENT_BREAKERS": json.dumps({"workout": NEVER_TRIP}),
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
            prom.wait_for(lambda: prom.query('up{job="ers"} == 1'), timeout=20)
            onset = time.monotonic()
            http.post(
                "/api/emergency/simulate-error", json={"component": "workout", "errorType": "agent"}
            ).raise_for_status()
            sender = threading.Thread(target=traffic, daemon=True)
            sender.start()

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
            stop_traffic.set()
            sender.join(timeout=15)

            incidents = http.get("/api/emergency/incidents?component=workout").json()
            detail = http.get(f"/api/emergency/incidents/{incidents['incidents'][0]['id']}")
            kinds = [entry["kind"] for entry in detail.json()["timeline"]]
            assert "alert_received" in kinds

            # Heal; with no calls the error ratio has no data, the alert resolves, and the
            # resolved notification releases the breaker for a trial.
            http.delete("/api/emergency/simulate-error").raise_for_status()
            prom.wait_for(lambda: breaker(http)["state"] == "half_open", timeout=60)
            history = breaker(http)["history"]
            released = [e for e in history if (e["from"], e["to"]) == ("forced_open", "half_open")]
            assert released and released[-1]["source"] == "alertmanager"
            reply = http.post("/chat", json={"message": "make me a workout plan", "userId": "t"})
            assert reply.json()["emergency"] is False
            assert breaker(http)["state"] == "closed"
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
