"""The monitoring server for tests: the roles' templates rendered by the project's own playbook, and
a real Prometheus (Debian's binary) started on a free loopback port against a real Pushgateway.

Imported by the server tests: agents and a Pushgateway (conftest.py) around testkit's Prometheus.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml

from conftest import Pushgateway, agent_command, agent_env
from testkit.dashboard_queries import rate_interval
from testkit.process import stop_process
from testkit.server import DASHBOARDS_DIR, Prometheus, read_flags, render_server_config, role_pushgateway_flags

RULE_TESTS = Path(__file__).resolve().parent / "fleet-rules.test.yml"
# Every alert the rules define (roles/prometheus/templates/rules/fleet-alerts.yml.j2).
FLEET_ALERTS = {
    "DeviceSilent",
    "PushgatewayDown",
    "DeviceHighCpu",
    "DeviceHighMemory",
    "DeviceDiskFilling",
    "DeviceDiskNearlyFull",
    "DeviceTemperatureHigh",
}


def host_port(url: str) -> str:
    """host:port of an http(s) URL, as a Prometheus static target."""
    return urllib.parse.urlsplit(url).netloc


def load_dashboards() -> Dict[str, Dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


Samples = Dict[Tuple[Tuple[str, str], ...], List[Tuple[float, str]]]


def raw_samples(prometheus: Prometheus, expr: str, at: float) -> Samples:
    """The raw samples (timestamp, value as Prometheus prints it) of a range selector such as
    'metric[60s]' evaluated at a fixed time, keyed by each series' sorted labels; stale markers are
    not samples and Prometheus leaves them out."""
    data = prometheus.api("query", query=expr, time=f"{at:.3f}")
    if data["resultType"] != "matrix":
        raise AssertionError(f"{expr!r} is not a range selector: {data['resultType']}")
    return {
        tuple(sorted(series["metric"].items())): [(float(ts), value) for ts, value in series["values"]]
        for series in data["result"]
    }


class Agent:
    """files/push_monitor.py running in the background as one simulated device."""

    def __init__(self, workdir: Path, gateway_url: str, serial: str, job: str, interval: float) -> None:
        self.serial = serial
        self.job = job
        self.interval = interval
        self.log = workdir / f"agent-{serial}.log"
        self.state_dir = workdir / f"state-{serial}"
        self.args = agent_command(
            "--pushgateway",
            gateway_url,
            "--interval",
            str(interval),
            "--job",
            job,
            "--device-serial",
            serial,
            "--top-n",
            "5",
            "--state-dir",
            str(self.state_dir),
        )
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"), env=agent_env()
        )

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


class FleetServer:
    """A Pushgateway and a Prometheus configured by the roles' rendered files, and agents pushing."""

    def __init__(self, gateway: Pushgateway, render: Path) -> None:
        self.gateway = gateway
        self.render = render
        self.agents: List[Agent] = []
        self.prometheus: Optional[Prometheus] = None
        self.started = 0.0  # when Prometheus was started (time.time())


@contextlib.contextmanager
def fleet_server(
    workdir: Path,
    devices: List[Tuple[str, str, float]],
    overrides: Dict[str, Any],
    prometheus_port: Optional[int] = None,
) -> Iterator[FleetServer]:
    """Renders the roles' server config (defaults, the test's gateway as the target, plus overrides),
    starts the gateway with the roles' flags, one agent per (serial, job, interval) and Prometheus;
    stops them all on the way out."""
    gateway = Pushgateway(workdir)
    render = render_server_config(
        workdir / "render",
        {
            "prometheus_rules_dir": str(workdir / "render" / "prometheus" / "rules"),
            "prometheus_pushgateway_targets": [host_port(gateway.url)],
            **overrides,
        },
    )
    server = FleetServer(gateway, render)
    try:
        gateway.extra_args = role_pushgateway_flags(render)
        gateway.start()
        for serial, job, interval in devices:
            agent = Agent(workdir, gateway.url, serial, job, interval)
            agent.start()
            server.agents.append(agent)
        config = render / "prometheus" / "prometheus.yml"
        flags = read_flags(render / "flags" / "prometheus.env")
        server.prometheus = Prometheus(workdir, config, flags, port=prometheus_port)
        server.started = time.time()
        server.prometheus.start()
        yield server
    finally:
        for agent in server.agents:
            agent.stop()
        if server.prometheus is not None:
            server.prometheus.stop()
        gateway.stop()


def grafana_rate_interval(datasource_file: Path, step_seconds: float) -> str:
    """Grafana's $__rate_interval for the provisioned datasource's timeInterval (scrape interval)."""
    datasource = yaml.safe_load(datasource_file.read_text())["datasources"][0]
    match = re.fullmatch(r"(\d+)s", datasource["jsonData"]["timeInterval"])
    if not match:
        raise AssertionError(f"timeInterval {datasource['jsonData']['timeInterval']!r} is not in seconds")
    return rate_interval(step_seconds, int(match.group(1)))
