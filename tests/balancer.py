"""The fleet's load balancer (compose service ``lb``) as a real nginx process: Debian's nginx
with ``compose/lb/nginx.conf``, its upstream pointed at replicas on loopback ports.

compose runs nginx 1.27.3, whose open-source build re-resolves Docker's service names
(``resolver 127.0.0.11`` and ``server ... resolve``); Debian 12's nginx (1.22) has neither,
and there is no Docker DNS here. Those two, the names and the listening port are the only
lines rewritten; every other line (retries, failure counting, backup servers, body limit,
blocked locations) is run as compose runs it. A rewrite that no longer finds its line fails,
so the test cannot drift away from the file."""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import free_port, start_process

ROOT = Path(__file__).resolve().parent.parent
LB_CONFIG = ROOT / "compose/lb/nginx.conf"
NOT_INSTALLED = (
    "nginx is not installed: `make test` installs it (Debian's nginx), or run "
    "`apt-get install nginx`"
)


def nginx_binary() -> str:
    """Debian's nginx; the tests that need it fail without it, as `make test` installs it."""
    found = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if found is None:
        pytest.fail(NOT_INSTALLED, pytrace=False)
    return found


def _replace(text: str, pattern: str, new: str, count: int) -> str:
    changed, made = re.subn(pattern, new, text, flags=re.MULTILINE)
    assert made == count, f"compose/lb/nginx.conf: expected {count} of {pattern!r}, found {made}"
    return changed


def loopback_config(listen_port: int, replicas: dict[str, int]) -> str:
    """compose/lb/nginx.conf with ``replicas`` (compose service name: loopback port) in place
    of Docker's names, and nginx listening on ``listen_port``."""
    text = _replace(LB_CONFIG.read_text(), r"^resolver .*;\n", "", 1)
    for name, port in replicas.items():
        text = _replace(
            text, rf"server {re.escape(name)}:8000 resolve ", f"server 127.0.0.1:{port} ", 2
        )
    return _replace(text, r"^(\s*)listen 8080;", rf"\g<1>listen 127.0.0.1:{listen_port};", 1)


def main_config(prefix: Path, server_config: Path) -> str:
    """nginx's own main file around the balancer's server config (which compose mounts into
    the image's http block), with every path under ``prefix``."""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    return (
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} info;\n"
        # The workers write bodies they buffer under prefix, a folder only its owner may
        # enter (pytest's); the image's workers own their temp paths the same way.
        f"user {getpass.getuser()};\n"
        "worker_processes 1;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp}\n"
        f"    uwsgi_temp_path {prefix / 'uwsgi'};\n"
        f"    scgi_temp_path {prefix / 'scgi'};\n"
        f"    include {server_config};\n"
        "}\n"
    )


def write_config(prefix: Path, listen_port: int, replicas: dict[str, int]) -> Path:
    prefix.mkdir(parents=True, exist_ok=True)
    server_config = prefix / "default.conf"
    server_config.write_text(loopback_config(listen_port, replicas))
    main = prefix / "nginx.conf"
    main.write_text(main_config(prefix, server_config))
    return main


def check_config(prefix: Path, replicas: dict[str, int]) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on the balancer's config."""
    main = write_config(prefix, free_port(), replicas)
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@dataclass
class Balancer:
    url: str
    process: subprocess.Popen[bytes]
    prefix: Path

    def log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # nginx's fast shutdown
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_balancer(prefix: Path, replicas: dict[str, int]) -> Balancer:
    """nginx in the foreground on a free loopback port, waited for until /readyz answers
    through it (so at least one replica is up)."""
    port = free_port()
    main = write_config(prefix, port, replicas)
    url = f"http://127.0.0.1:{port}"
    command = [nginx_binary(), "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(main)]
    process = start_process(
        [*command, "-g", "daemon off;"],
        cwd=prefix,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        log_path=prefix / "stdout.log",
        ready_url=f"{url}/readyz",
        what="nginx",
    )
    return Balancer(url, process, prefix)
