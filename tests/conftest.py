"""Shared fixtures: a real Pushgateway (Debian's prometheus-pushgateway) on a free loopback port,
and helpers to run the agent as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Type

import pytest

from testkit import ROOT
from testkit.process import free_port, processes_marked, stop_process, wait_until
from testkit.web import http_get

AGENT = ROOT / "files" / "push_monitor.py"
PUSHGATEWAY_BIN = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"

sys.path.insert(0, str(AGENT.parent))
# Imported from here by the test modules (one import line for the fixtures and these helpers).
__all__ = ["ROOT", "LoopbackHTTPServer", "free_port", "processes_marked", "stop_process", "wait_until"]


class LoopbackHTTPServer:
    """A ThreadingHTTPServer on a free loopback port, serving from a daemon thread."""

    def __init__(self, handler: Type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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


class FakeClock:
    """The agent's schedule on a clock that moves only when the agent sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


# Runs a script (argv: refused modules, script, its arguments) with imports of the refused top-level
# modules failing like a missing package. Any attempt also makes the run exit 1 naming the module,
# so an import the script wraps in try/except ImportError fails the test as well.
REFUSING_RUNNER = """
import runpy, sys
refused, attempted = set(sys.argv[1].split(",")), []

class Refuse:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in refused:
            attempted.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Refuse)
sys.argv = sys.argv[2:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    if attempted:
        sys.exit(f"refused import attempted: {', '.join(attempted)}")
"""
# Installed on the controller for bench/naive_agent.py, never on devices: the agent and the janitor
# must run without it (docs/agent.md).
NOT_ON_DEVICES = ("prometheus_client",)


def command_refusing(refused: Sequence[str], script: Path, *args: str, python: str = sys.executable) -> List[str]:
    return [python, "-c", REFUSING_RUNNER, ",".join(refused), str(script), *args]


def agent_command(*args: str, python: str = sys.executable, refused: Sequence[str] = ()) -> List[str]:
    if refused:
        return command_refusing(refused, AGENT, *args, python=python)
    return [python, str(AGENT), *args]


def run_agent(
    *args: str,
    env: Optional[Dict[str, str]] = None,
    timeout: float = 30,
    python: str = sys.executable,
    refused: Sequence[str] = (),
):
    """Runs the agent to completion with a clean agent environment (no inherited PUSH_* settings)."""
    command = agent_command(*args, python=python, refused=refused)
    return subprocess.run(command, env=agent_env(env), capture_output=True, text=True, timeout=timeout)


def agent_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    agent_vars = {
        "PUSHGATEWAY_URL", "PUSH_INTERVAL", "DEVICE_JOB", "TOP_N", "DEVICE_SERIAL", "PUSH_TIMEOUT", "LOG_LEVEL",
        "PUSHGATEWAY_USERNAME", "PUSHGATEWAY_PASSWORD", "PUSHGATEWAY_PASSWORD_FILE", "PUSHGATEWAY_CA_FILE",
        "PUSHGATEWAY_CLIENT_CERT", "PUSHGATEWAY_CLIENT_KEY", "STATE_DIRECTORY", "PUSH_DISABLE",
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in agent_vars}
    env.update(extra or {})
    return env
