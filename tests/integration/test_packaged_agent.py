"""A third-party agent installed as a distribution with an ``ers.agents`` entry point: a wheel
installed by pip (offline, into a directory of its own that PYTHONPATH names), named in the
settings file by its entry point, and answering a chat under ``ers serve`` with no change to
ERS."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port, start_ers
from tests.processes import serve

pytestmark = pytest.mark.integration

ENTRY_POINTS = """\
[ers.agents]
thirdparty = thirdparty_agent:create
"""

MODULE = '''\
"""An agent of a third party's: answers every message it is routed."""

from service.agents.base import AgentReply, AgentRequest


class ThirdPartyAgent:
    def __init__(self, name: str) -> None:
        self.name = name

    async def handle(self, request: AgentRequest) -> AgentReply:
        return AgentReply(f"third-party agent {self.name} heard: {request.message}", self.name)


def create(name, stores):
    return ThirdPartyAgent(name)
'''


def build_wheel(directory: Path) -> Path:
    """The distribution ``thirdparty-agent 1.0`` as a wheel, written as the wheel format says
    (the venv's setuptools cannot build wheels offline: it lacks bdist_wheel)."""
    dist_info = "thirdparty_agent-1.0.dist-info"
    files = {
        "thirdparty_agent.py": MODULE,
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\nName: thirdparty-agent\nVersion: 1.0\n",
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"{dist_info}/entry_points.txt": ENTRY_POINTS,
    }
    record = []
    for name, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    wheel = directory / "thirdparty_agent-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def install_package(tmp_path: Path) -> Path:
    """Install the distribution with pip, offline, into ``<tmp_path>/site``; return it."""
    site = tmp_path / "site"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            str(build_wheel(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return site


def settings_file(path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "agents": {"thirdparty": {"kind": "python", "factory": "thirdparty"}},
                "agent_routes": {"workout": "thirdparty"},
            }
        )
    )
    return path


def test_an_installed_package_s_entry_point_agent_answers_a_chat(tmp_path: Path) -> None:
    site = install_package(tmp_path)
    entry_points = list(site.glob("thirdparty_agent-1.0.dist-info/entry_points.txt"))
    assert entry_points, sorted(p.name for p in site.iterdir())
    config = settings_file(tmp_path / "ers.yaml")

    ers = start_ers(tmp_path / "ers", env={"ERS_CONFIG": str(config), "PYTHONPATH": str(site)})
    try:
        with httpx.Client(base_url=ers.url, timeout=30) as http:
            reply = http.post("/chat", json={"message": "make me a workout plan", "userId": "u"})
    finally:
        exit_code = ers.stop()
    assert exit_code == 0, ers.log()[-4000:]
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["agent"] == "thirdparty"
    assert body["response"] == "third-party agent thirdparty heard: make me a workout plan"


def test_without_the_package_the_entry_point_is_missing_and_serve_says_so(
    tmp_path: Path,
) -> None:
    config = settings_file(tmp_path / "ers.yaml")
    # Without the folder the package is installed in (an empty PYTHONPATH adds nothing).
    address = ("--host", "127.0.0.1", "--port", str(free_port()))
    result = serve(tmp_path, *address, ERS_CONFIG=str(config), PYTHONPATH="")
    assert result.returncode == 2, result.stderr
    assert "no entry point 'thirdparty' in the group 'ers.agents'" in result.stderr
