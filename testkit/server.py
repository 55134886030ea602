"""The monitoring server as the roles configure it, outside a host: the roles' templates rendered by
playbooks/render-server-config.yml, and a real Prometheus, Pushgateway and Alertmanager (Debian's
binaries) on free loopback ports."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from testkit import ROOT
from testkit.playbook import run_playbook
from testkit.process import free_port, start_daemon, stop_process
from testkit.web import Endpoint, http_get

PROMETHEUS_BIN = "/usr/bin/prometheus"
PUSHGATEWAY_BIN = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"
PROMTOOL_BIN = "/usr/bin/promtool"
ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"
RENDER_PLAYBOOK = ROOT / "playbooks" / "render-server-config.yml"
COMPOSE_VARS = ROOT / "server" / "compose-vars.yml"
COMMITTED_RENDER = ROOT / "server" / "compose"
DASHBOARDS_DIR = ROOT / "roles" / "grafana" / "files" / "dashboards"


def render_server_config(
    dest: Path, extra_vars: Optional[Dict[str, Any]] = None, vars_file: Path = COMPOSE_VARS
) -> Path:
    """Renders the roles' server templates with their defaults (plus vars_file, plus extra_vars) into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    extra = {"server_config_dest": str(dest), "server_config_vars_file": str(vars_file), **(extra_vars or {})}
    result = run_playbook(RENDER_PLAYBOOK, extra_vars=extra, timeout=180)
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


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL_BIN, *args], check=False, capture_output=True, text=True, timeout=120)


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
        self.process = start_daemon(
            [PROMETHEUS_BIN, *self.args], self.log, lambda: http_get(self.url + "/-/ready", 0.5)
        )

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


def role_prometheus(workdir: Path, extra_vars: Dict[str, Any], port: Optional[int] = None) -> Tuple[Prometheus, Path]:
    """The roles' Prometheus (config, rules and flags rendered into workdir/rendered with extra_vars), over
    plain HTTP on loopback: the rendered web config is left out. Returns it unstarted, and the render."""
    rendered = workdir / "rendered"
    render_server_config(rendered, {"prometheus_rules_dir": str(rendered / "prometheus" / "rules"), **extra_vars})
    flags = [
        flag for flag in read_flags(rendered / "flags" / "prometheus.env") if not flag.startswith("--web.config.file=")
    ]
    return Prometheus(workdir, rendered / "prometheus" / "prometheus.yml", flags, port), rendered


def role_pushgateway_flags(render: Path) -> List[str]:
    """The flags roles/pushgateway renders, minus the ones Pushgateway sets itself (listen address,
    persistence file) and the web config (plain HTTP on loopback)."""
    own = ("--web.listen-address", "--persistence.file", "--web.config.file")
    return [flag for flag in read_flags(render / "flags" / "pushgateway.env") if flag.split("=", 1)[0] not in own]


class Pushgateway:
    """A real Pushgateway on a free loopback port (or on port, when Prometheus' config must name it first)
    with its own persistence file in workdir (Debian's default one is shared) and extra_args; over HTTPS
    with a login when given the CA and the login its --web.config.file sets. Restartable on the same port."""

    admin_api = False  # --web.enable-admin-api, unless extra_args has it

    def __init__(
        self,
        workdir: Path,
        extra_args: Optional[Sequence[str]] = None,
        auth: Optional[Tuple[str, str]] = None,
        ca_file: Optional[str] = None,
        port: Optional[int] = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"{'https' if ca_file else 'http'}://127.0.0.1:{self.port}"
        self.endpoint, self.ca_file = Endpoint(self.url, *(auth or (None, None)), ca_file), ca_file
        self.workdir = workdir
        self.extra_args = list(extra_args or [])
        self.log = workdir / "pushgateway.log"
        self.process: Optional[subprocess.Popen] = None

    @property
    def args(self) -> List[str]:
        own = [f"--web.listen-address=127.0.0.1:{self.port}", f"--persistence.file={self.workdir / 'pushgateway.db'}"]
        admin = ["--web.enable-admin-api"] if self.admin_api and "--web.enable-admin-api" not in self.extra_args else []
        return own + admin + self.extra_args

    def start(self) -> None:
        self.process = start_daemon([PUSHGATEWAY_BIN, *self.args], self.log, lambda: self.get("/-/ready", 0.5).strip())

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def get(self, path: str, timeout: float = 2.0) -> bytes:
        return self.endpoint.get(path, timeout)

    def groups(self) -> List[Dict]:
        return json.loads(self.get("/api/v1/metrics"))["data"]

    def group(self, job: str, device_serial: str) -> Optional[Dict]:
        for group in self.groups():
            if group["labels"].get("job") == job and group["labels"].get("device_serial") == device_serial:
                return group
        return None

    def push_time(self, job: str, device_serial: str) -> Optional[float]:
        group = self.group(job, device_serial)
        return None if group is None else float(group["push_time_seconds"]["metrics"][0]["value"])


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
        self.process = start_daemon(
            [ALERTMANAGER_BIN, *self.args], self.log, lambda: http_get(self.url + "/-/ready", 0.5)
        )

    def stop(self) -> None:
        stop_process(self.process, 15)
        self.process = None

    def alert_groups(self) -> List[Dict[str, Any]]:
        return json.loads(http_get(self.url + "/api/v2/alerts/groups", 5))
