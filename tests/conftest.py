"""Shared fixtures: a real Pushgateway (Debian's prometheus-pushgateway) on a free loopback port,
and helpers to run the agent as a subprocess."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Type

import pytest

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "files" / "push_monitor.py"
PUSHGATEWAY_BIN = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"

sys.path.insert(0, str(AGENT.parent))
# bench/throwaway_pki.py: the benchmark's and the TLS tests' throwaway CA.
sys.path.insert(0, str(ROOT / "bench"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05, message: str = "condition") -> float:
    """Polls until predicate() is truthy; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def stop_process(process: Optional[subprocess.Popen], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within timeout seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def http_get(
    url: str, timeout: float = 2.0, auth: Optional[Tuple[str, str]] = None, ca_file: Optional[str] = None
) -> bytes:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return response.read()


class LoopbackHTTPServer:
    """A ThreadingHTTPServer on a free loopback port, serving from a daemon thread."""

    def __init__(self, handler: Type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def processes_marked(marker: str) -> List[int]:
    """Pids whose environment carries marker: every process a benchmark starts inherits it."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(int(entry))
        except OSError:
            continue  # gone, or a kernel thread
    return found


class Pushgateway:
    """A real Pushgateway process; restartable on the same port for outage tests."""

    def __init__(
        self,
        workdir: Path,
        extra_args: Optional[List[str]] = None,
        auth: Optional[Tuple[str, str]] = None,
        ca_file: Optional[str] = None,
    ) -> None:
        self.port = free_port()
        self.url = f"{'https' if ca_file else 'http'}://127.0.0.1:{self.port}"
        self.auth = auth
        self.ca_file = ca_file
        self.workdir = workdir
        self.extra_args = extra_args or []
        self.process: Optional[subprocess.Popen] = None
        self.log = workdir / "pushgateway.log"

    def start(self) -> None:
        # Debian's build defaults --persistence.file to a shared path: every test gateway gets its own.
        args = [
            PUSHGATEWAY_BIN,
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--persistence.file={self.workdir / 'pushgateway.db'}",
            "--web.enable-admin-api",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"))
        wait_until(self.ready, 15, message=f"pushgateway on {self.url}")

    def ready(self) -> bool:
        try:
            return self.get("/-/ready", 0.5).strip() != b""
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def get(self, path: str, timeout: float = 2.0) -> bytes:
        return http_get(self.url + path, timeout, auth=self.auth, ca_file=self.ca_file)

    def groups(self) -> List[Dict]:
        return json.loads(self.get("/api/v1/metrics"))["data"]

    def group(self, job: str, device_serial: str) -> Optional[Dict]:
        for group in self.groups():
            if group["labels"].get("job") == job and group["labels"].get("device_serial") == device_serial:
                return group
        return None

    def push_time(self, job: str, device_serial: str) -> Optional[float]:
        group = self.group(job, device_serial)
        if group is None:
            return None
        return float(group["push_time_seconds"]["metrics"][0]["value"])


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[Pushgateway]:
    gateway = Pushgateway(tmp_path)
    gateway.start()
    yield gateway
    gateway.stop()


def agent_command(*args: str, python: str = sys.executable) -> List[str]:
    return [python, str(AGENT), *args]


def run_agent(*args: str, env: Optional[Dict[str, str]] = None, timeout: float = 30, python: str = sys.executable):
    """Runs the agent to completion with a clean agent environment (no inherited PUSH_* settings)."""
    return subprocess.run(
        agent_command(*args, python=python), env=agent_env(env), capture_output=True, text=True, timeout=timeout
    )


def agent_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    agent_vars = {
        "PUSHGATEWAY_URL", "PUSH_INTERVAL", "DEVICE_JOB", "TOP_N", "DEVICE_SERIAL", "PUSH_TIMEOUT", "LOG_LEVEL",
        "PUSHGATEWAY_USERNAME", "PUSHGATEWAY_PASSWORD", "PUSHGATEWAY_PASSWORD_FILE", "PUSHGATEWAY_CA_FILE",
        "PUSHGATEWAY_CLIENT_CERT", "PUSHGATEWAY_CLIENT_KEY", "STATE_DIRECTORY",
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in agent_vars}
    env.update(extra or {})
    return env
