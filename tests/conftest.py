"""Shared fixtures: a real Pushgateway (testkit's, with the admin API on) on a free loopback port, and
helpers to run the agent as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Type

import pytest

from testkit import ROOT, server
from testkit.process import free_port, processes_marked, stop_process, wait_until

AGENT = ROOT / "files" / "push_monitor.py"

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


class Pushgateway(server.Pushgateway):
    """testkit's Pushgateway with the admin API on, as the roles run it."""

    admin_api = True


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
