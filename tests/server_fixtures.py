"""The monitoring server for tests: the roles' templates rendered by the project's own playbook, and
a real Prometheus (Debian's binary) started on a free loopback port against a real Pushgateway.

Imported by the server tests; the lead's conftest.py provides Pushgateway, free_port and wait_until.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml

from conftest import ROOT, Pushgateway, agent_command, agent_env, free_port, http_get, stop_process, wait_until

PROMETHEUS_BIN = "/usr/bin/prometheus"
PROMTOOL_BIN = "/usr/bin/promtool"
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
RENDER_PLAYBOOK = ROOT / "playbooks" / "render-server-config.yml"
COMPOSE_VARS = ROOT / "server" / "compose-vars.yml"
COMMITTED_RENDER = ROOT / "server" / "compose"
DASHBOARDS_DIR = ROOT / "roles" / "grafana" / "files" / "dashboards"
RULE_TESTS = ROOT / "tests" / "fleet-rules.test.yml"


def render_server_config(
    dest: Path, extra_vars: Optional[Dict[str, Any]] = None, vars_file: Path = COMPOSE_VARS
) -> Path:
    """Renders the roles' server templates with their defaults (plus vars_file, plus extra_vars) into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    extra = {"server_config_dest": str(dest), "server_config_vars_file": str(vars_file), **(extra_vars or {})}
    extra_file = dest.parent / f"{dest.name}.extra-vars.json"
    extra_file.write_text(json.dumps(extra))
    env = {**os.environ, "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False"}
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, str(RENDER_PLAYBOOK), "-e", f"@{extra_file}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if result.returncode != 0:
        raise AssertionError(f"rendering the server config failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
    return dest


def read_flags(env_file: Path) -> List[str]:
    """The ARGS="..." of a rendered /etc/default file, split the way systemd splits $ARGS."""
    for line in env_file.read_text().splitlines():
        if line.startswith("ARGS="):
            return shlex.split(shlex.split(line[len("ARGS=") :])[0])
    raise AssertionError(f"{env_file} has no ARGS= line")


def replace_flags(flags: List[str], overrides: Dict[str, str]) -> List[str]:
    """Flags with --name=value entries replaced (or added) from overrides."""
    kept = [flag for flag in flags if flag.split("=", 1)[0] not in overrides]
    return kept + [f"{name}={value}" for name, value in overrides.items()]


def pushgateway_role_args(env_file: Path) -> List[str]:
    """The roles' Pushgateway flags from a rendered /etc/default file, minus the ones conftest's
    Pushgateway sets itself (its own port, persistence file and admin API)."""
    own = ("--web.listen-address", "--web.enable-admin-api", "--persistence.file")
    return [flag for flag in read_flags(env_file) if not flag.startswith(own)]


def host_port(url: str) -> str:
    """host:port of an http(s) URL, as a Prometheus static target."""
    return urllib.parse.urlsplit(url).netloc


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL_BIN, *args], capture_output=True, text=True, timeout=120)


def load_dashboards() -> Dict[str, Dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


def iter_targets(dashboard: Dict[str, Any]) -> Iterator[tuple]:
    """(panel, target) for every query target of every panel, rows included."""
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner, target


class Prometheus:
    """A real Prometheus process with the given config, storage in workdir, on a free loopback port
    (or on port, when its config must name its own address before it starts)."""

    def __init__(self, workdir: Path, config: Path, flags: List[str], port: Optional[int] = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.log = workdir / "prometheus.log"
        self.args = replace_flags(
            flags,
            {
                "--config.file": str(config),
                "--storage.tsdb.path": str(workdir / "tsdb"),
                "--web.listen-address": f"127.0.0.1:{self.port}",
            },
        )
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [PROMETHEUS_BIN, *self.args], stdout=subprocess.DEVNULL, stderr=self.log.open("ab")
        )
        wait_until(self.ready, 30, 0.2, message=f"prometheus on {self.url} (log: {self.log})")

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            return b"Ready" in http_get(self.url + "/-/ready", 0.5)
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.process, 15)
        self.process = None

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        body = json.loads(http_get(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""), 10))
        if body.get("status") != "success":
            raise AssertionError(f"prometheus {path} {params}: {body}")
        return body["data"]

    def instant(self, expr: str) -> List[Dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def range(self, expr: str, seconds: float, step: float) -> List[Dict[str, Any]]:
        end = time.time()
        return self.api("query_range", query=expr, start=end - seconds, end=end, step=step)["result"]


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
        gateway.extra_args = pushgateway_role_args(render / "flags" / "pushgateway.env")
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
    """Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval), where the
    scrape interval is the datasource's timeInterval."""
    datasource = yaml.safe_load(datasource_file.read_text())["datasources"][0]
    match = re.fullmatch(r"(\d+)s", datasource["jsonData"]["timeInterval"])
    if not match:
        raise AssertionError(f"timeInterval {datasource['jsonData']['timeInterval']!r} is not in seconds")
    scrape = int(match.group(1))
    return f"{int(max(step_seconds + scrape, 4 * scrape))}s"


def substitute(expr: str, variables: Dict[str, str]) -> str:
    """Grafana's variable syntax ($name and ${name}) replaced by values; unknown variables are an error."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise AssertionError(f"query {expr!r} uses ${name}, which the test does not know")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"


class Alertmanager:
    """A real Alertmanager (Debian's binary) with the roles' rendered flags and config, storage in
    workdir, on the given loopback port (Prometheus' rendered config names it before it starts)."""

    def __init__(self, workdir: Path, render: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = workdir / "alertmanager.log"
        storage = workdir / "alertmanager"
        storage.mkdir(parents=True, exist_ok=True)
        self.args = replace_flags(
            read_flags(render / "flags" / "alertmanager.env"),
            {
                "--config.file": str(render / "alertmanager" / "alertmanager.yml"),
                "--storage.path": str(storage),
                "--web.listen-address": f"127.0.0.1:{port}",
            },
        )
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [ALERTMANAGER_BIN, *self.args], stdout=subprocess.DEVNULL, stderr=self.log.open("ab")
        )
        wait_until(self.ready, 30, 0.2, message=f"alertmanager on {self.url} (log: {self.log})")

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"alertmanager exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            http_get(self.url + "/-/ready", 0.5)
            return True
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.process, 15)
        self.process = None

    def alert_groups(self) -> List[Dict[str, Any]]:
        return json.loads(http_get(self.url + "/api/v2/alerts/groups", 5))
