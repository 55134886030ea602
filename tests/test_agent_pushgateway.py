"""The agent as a subprocess against a real Pushgateway (Debian's prometheus-pushgateway) on loopback."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from conftest import (
    NOT_ON_DEVICES,
    ROOT,
    LoopbackHTTPServer,
    Pushgateway,
    agent_command,
    agent_env,
    run_agent,
    wait_until,
)

pytestmark = pytest.mark.integration

EXPECTED_METRICS = {
    "total_cpu_usage_percent", "total_memory_usage_percent", "app_cpu_usage_percent", "app_memory_usage_mb",
    "memory_total_bytes", "memory_available_bytes", "memory_used_bytes", "swap_total_bytes", "swap_used_bytes",
    "network_receive_bytes_total", "network_transmit_bytes_total", "network_receive_packets_total",
    "network_transmit_packets_total", "network_receive_errors_total", "network_transmit_errors_total",
    "load_average_1m", "load_average_5m", "load_average_15m", "boot_time_seconds", "system_processes",
    "push_monitor_info", "push_monitor_interval_seconds", "push_monitor_collection_duration_seconds",
    "push_monitor_push_failures_total", "push_monitor_collection_timestamp_seconds",
    "push_monitor_start_time_seconds",
    # The root filesystem is always reported; disk IO where a physical disk is (docs/agent.md).
    "disk_usage_percent", "disk_size_bytes", "disk_available_bytes",
}  # fmt: skip
if any(os.path.exists(os.path.join("/sys/block", name, "device")) for name in os.listdir("/sys/block")):
    EXPECTED_METRICS |= {
        "disk_read_bytes_total", "disk_written_bytes_total",
        "disk_reads_completed_total", "disk_writes_completed_total",
    }  # fmt: skip
GATEWAY_METRICS = {"push_time_seconds", "push_failure_time_seconds"}
AWKWARD_SERIALS = ["serial with space", "rack/7/slot/3", "Gerät-ünïcödé-设备", ".", ".."]


def metric_families(group: dict) -> dict:
    return {name: family for name, family in group.items() if isinstance(family, dict) and "metrics" in family}


def test_every_metric_arrives_for_two_devices_with_awkward_serials_under_one_job(pushgateway: Pushgateway) -> None:
    job = "shared job/with slash"
    for serial in AWKWARD_SERIALS:
        result = run_agent(
            "--once", "--pushgateway", pushgateway.url, "--job", job, "--device-serial", serial, "--top-n", "5"
        )
        assert result.returncode == 0, result.stderr
    for serial in AWKWARD_SERIALS:
        group = pushgateway.group(job, serial)
        assert group is not None, f"no group for {serial!r}: {[g['labels'] for g in pushgateway.groups()]}"
        assert group["labels"] == {"job": job, "device_serial": serial}
        families = metric_families(group)
        assert set(families) == EXPECTED_METRICS | GATEWAY_METRICS
        for name in EXPECTED_METRICS:
            series = families[name]["metrics"]
            assert series, name
            for one in series:
                assert one["labels"]["device_serial"] == serial, name
                assert one["labels"]["job"] == job, name
                assert one["labels"]["hostname"], name
        apps = families["app_cpu_usage_percent"]["metrics"]
        assert 1 <= len(apps) <= 5 and all(a["labels"]["app"] for a in apps)
        assert {a["labels"]["app"] for a in apps} == {
            a["labels"]["app"] for a in families["app_memory_usage_mb"]["metrics"]
        }
        interfaces = {m["labels"]["interface"] for m in families["network_receive_bytes_total"]["metrics"]}
        assert "lo" in interfaces
        assert families["push_monitor_interval_seconds"]["metrics"][0]["value"] == "1"
        assert families["network_receive_bytes_total"]["type"] == "COUNTER"
    assert len(pushgateway.groups()) == len(AWKWARD_SERIALS)


@pytest.mark.parametrize("job", [".", ".."])
def test_a_job_that_is_a_path_step_pushes(pushgateway: Pushgateway, job: str) -> None:
    result = run_agent("--once", "--pushgateway", pushgateway.url, "--job", job, "--device-serial", "s")
    assert result.returncode == 0, result.stderr
    assert pushgateway.group(job, "s") is not None


def test_once_fails_with_exit_1_when_the_gateway_is_unreachable(tmp_path: Path) -> None:
    unused = Pushgateway(tmp_path)  # a free port nobody listens on
    result = run_agent("--once", "--pushgateway", unused.url, "--device-serial", "x")
    assert result.returncode == 1
    assert "cannot connect" in result.stderr
    assert "Traceback" not in result.stderr


def test_print_writes_every_metric_without_pushing() -> None:
    result = run_agent("--print", "--device-serial", "printed", "--pushgateway", "http://127.0.0.1:1")
    assert result.returncode == 0, result.stderr
    names = {line.split()[2] for line in result.stdout.splitlines() if line.startswith("# TYPE")}
    assert names == EXPECTED_METRICS
    assert 'device_serial="printed"' in result.stdout


def test_distro_packages_of_debian_12_run_the_agent(pushgateway: Pushgateway) -> None:
    """python3-psutil 5.9 from Debian under Debian's python3: what the role installs there. A
    prometheus_client on this host is refused, as it is not on a device."""
    system_python = "/usr/bin/python3"
    probe = subprocess.run([system_python, "-c", "import psutil"], capture_output=True, check=False)
    assert probe.returncode == 0, "scripts/setup-host.sh installs python3-psutil"
    result = run_agent(
        "--once", "--pushgateway", pushgateway.url, "--device-serial", "debian-distro",
        python=system_python, refused=NOT_ON_DEVICES,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        set(metric_families(pushgateway.group("device-metrics", "debian-distro"))) == EXPECTED_METRICS | GATEWAY_METRICS
    )


# ---------------------------------------------------------------------------- a long-running agent


class RunningAgent:
    def __init__(self, *args: str) -> None:
        self.log_path: Path | None = None
        self.process = subprocess.Popen(agent_command(*args), env=agent_env(), stderr=subprocess.PIPE, text=True)
        self.stderr_lines: List[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def started_agents() -> Iterator[list]:
    agents: list = []
    yield agents
    for agent in agents:
        agent.kill()


def test_agent_survives_a_gateway_outage_and_resumes_within_one_interval(
    pushgateway: Pushgateway, started_agents
) -> None:
    interval = 1.0
    agent = RunningAgent(
        "--pushgateway", pushgateway.url, "--interval", str(interval), "--device-serial", "outage", "--job", "j"
    )
    started_agents.append(agent)
    wait_until(lambda: pushgateway.push_time("j", "outage"), 10, message="first push")

    pushgateway.stop()
    time.sleep(10.5)
    assert agent.process.poll() is None, "the agent must never exit on an outage"
    pushgateway.start()  # its persistence file brings the old group back: wait for a newer push
    back, back_wall = time.monotonic(), time.time()
    seen = wait_until(
        lambda: pushgateway.push_time("j", "outage") > back_wall, 10, interval=0.02, message="push after restart"
    )
    assert seen - back <= interval + 0.25, f"first push {seen - back:.2f} s after the gateway returned"
    wait_until(lambda: any("recovered" in line for line in agent.stderr_lines), 5, message="recovery log line")
    assert agent.stop() == 0
    failures = [line for line in agent.stderr_lines if " failed: " in line]
    recoveries = [line for line in agent.stderr_lines if "recovered" in line]
    assert len(failures) == 1, agent.stderr_lines  # one line when the outage starts, no flood
    assert len(recoveries) == 1, agent.stderr_lines
    assert "Traceback" not in "\n".join(agent.stderr_lines)


def test_sigterm_exits_0_promptly_and_delete_on_exit_removes_the_group(
    pushgateway: Pushgateway, started_agents
) -> None:
    agent = RunningAgent(
        "--pushgateway", pushgateway.url, "--interval", "30", "--device-serial", "leaving", "--delete-on-exit"
    )
    started_agents.append(agent)
    wait_until(lambda: pushgateway.push_time("device-metrics", "leaving"), 10, message="first push")
    stopped = time.monotonic()
    assert agent.stop(signal.SIGTERM) == 0
    assert time.monotonic() - stopped < 5
    # DELETE is answered 202 and applied asynchronously by the gateway
    wait_until(lambda: pushgateway.group("device-metrics", "leaving") is None, 5, message="group deleted")


def test_sigint_exits_0_and_keeps_the_group_without_delete_on_exit(pushgateway: Pushgateway, started_agents) -> None:
    agent = RunningAgent("--pushgateway", pushgateway.url, "--interval", "30", "--device-serial", "staying")
    started_agents.append(agent)
    wait_until(lambda: pushgateway.push_time("device-metrics", "staying"), 10, message="first push")
    assert agent.stop(signal.SIGINT) == 0
    assert pushgateway.group("device-metrics", "staying") is not None
    assert "Traceback" not in "\n".join(agent.stderr_lines)


# ---------------------------------------------------------------------------- schedule and bad input


class RecordingGateway:
    """A loopback HTTP endpoint that records when each request arrived and can refuse for a while:
    the schedule is a property of the agent, so the receiving side only needs to take notes."""

    def __init__(self, failing: bool = False) -> None:
        self.requests: List[Tuple[float, str, str]] = []
        self.failing = failing
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.requests.append((time.monotonic(), self.command, self.path))
                self.send_response(500 if recorder.failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_DELETE = do_PUT

            def log_message(self, *args) -> None:
                pass

        self.http = LoopbackHTTPServer(Handler)
        self.url = self.http.url

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def recorder() -> Iterator[RecordingGateway]:
    gateway = RecordingGateway()
    yield gateway
    gateway.close()


def test_schedule_is_fixed_and_does_not_drift(recorder: RecordingGateway, started_agents) -> None:
    interval = 0.2
    agent = RunningAgent("--pushgateway", recorder.url, "--interval", str(interval), "--device-serial", "clock")
    started_agents.append(agent)
    wait_until(lambda: len(recorder.requests) >= 41, 30, message="41 pushes")
    agent.stop()
    times = [t for t, _, _ in recorder.requests[:41]]
    # Slot k lands at first + k * interval: a drifting loop (sleep(interval) after work) would be
    # late by the accumulated collection time after 40 cycles.
    late = [times[k] - (times[0] + k * interval) for k in range(41)]
    assert max(abs(x) for x in late) < 0.1, late
    assert all(method == "PUT" for _, method, _ in recorder.requests)


def test_keeps_collecting_with_backoff_while_the_gateway_refuses(recorder: RecordingGateway, started_agents) -> None:
    recorder.failing = True
    agent = RunningAgent("--pushgateway", recorder.url, "--interval", "1", "--device-serial", "refused")
    started_agents.append(agent)
    time.sleep(6)
    attempts = len(recorder.requests)
    # backoff is capped at the interval: never fewer attempts than one per interval, never a flood
    assert 5 <= attempts <= 14, attempts
    recorder.failing = False
    wait_until(lambda: any("recovered" in line for line in agent.stderr_lines), 5, message="recovery log line")
    agent.stop()
    assert sum(" failed: " in line for line in agent.stderr_lines) == 1
    assert "HTTP 500" in "\n".join(agent.stderr_lines)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--interval", "0"], {}),
        (["--interval", "nan"], {}),
        (["--interval", "soon"], {}),
        (["--top-n", "-3"], {}),
        (["--pushgateway", "not a url"], {}),
        (["--username", "u", "--password-file", "/nonexistent/password"], {}),
        ([], {"PUSH_INTERVAL": "-1"}),
        ([], {"PUSHGATEWAY_URL": "localhost:9091"}),
        (["--password", "secret"], {}),
    ],
)
def test_bad_input_exits_2_with_one_line_before_any_network_traffic(recorder: RecordingGateway, args, env) -> None:
    if "PUSHGATEWAY_URL" not in env and "--pushgateway" not in args:
        args = ["--pushgateway", recorder.url, *args]
    result = subprocess.run(
        agent_command(*args, "--once"), env=agent_env(env), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("push_monitor: error: ")
    assert recorder.requests == []


def test_version_and_help() -> None:
    assert run_agent("--version").stdout.startswith("push_monitor ")
    helptext = run_agent("--help").stdout
    for flag in (
        "--pushgateway",
        "--interval",
        "--job",
        "--top-n",
        "--device-serial",
        "--once",
        "--print",
        "--timeout",
    ):
        assert flag in helptext
    assert sys.executable


# ---------------------------------------------------------------------------- other interpreters and library versions

COMPAT_TARGETS = {
    # Ubuntu 22.04 ships Python 3.10 with python3-psutil 5.9.0.
    "ubuntu-22.04": ("python3.10", ["psutil==5.9.0"]),
    # The oldest Python the agent supports, with today's pinned libraries.
    "python-3.9": ("python3.9", ["-r", str(ROOT / "files" / "requirements.txt")]),
}


def find_interpreter(name: str) -> Optional[str]:
    """A working interpreter of that name (pyenv shims exist for versions that are not enabled)."""
    candidates = [
        f"/usr/bin/{name}",
        *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/*/bin/{name}"))),
        shutil.which(name),
    ]
    for candidate in candidates:
        if candidate and os.path.exists(candidate) and subprocess.run([candidate, "-c", "import venv"]).returncode == 0:
            return candidate
    return None


def compat_python(name: str) -> str:
    """A venv (cached under .cache/compat/) with that interpreter and those library versions."""
    interpreter, requirements = COMPAT_TARGETS[name]
    found = find_interpreter(interpreter)
    if found is None:
        pytest.skip(f"no {interpreter} interpreter on this host to check {name} compatibility")
    venv = ROOT / ".cache" / "compat" / name
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists() or stamp.read_text() != repr(requirements):
        subprocess.run([found, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True, timeout=600)
        stamp.write_text(repr(requirements))
    return str(python)


@pytest.mark.parametrize("name", sorted(COMPAT_TARGETS))
def test_agent_runs_with_older_interpreters_and_libraries(pushgateway: Pushgateway, name: str) -> None:
    python = compat_python(name)
    result = run_agent("--once", "--pushgateway", pushgateway.url, "--device-serial", name, python=python)
    assert result.returncode == 0, result.stderr
    assert set(metric_families(pushgateway.group("device-metrics", name))) == EXPECTED_METRICS | GATEWAY_METRICS
