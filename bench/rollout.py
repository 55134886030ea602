#!/usr/bin/env python3
"""How long `ansible-playbook site.yml` takes onto 1, 5, 10 and 20 device containers, first run and
no-change rerun, over podman exec, SSH and SSH + Mitogen; the method and the results are in
docs/benchmarks.md. Exit 0 after the table, 1 when the benchmark cannot run, 2 on bad options;
containers (fleet-bench-*) and the network are removed at the end, also on SIGINT/SIGTERM.

    .venv/bin/python bench/rollout.py                                 # 1,5,10,20 devices, all connections
    .venv/bin/python bench/rollout.py --devices 1 --connections ssh   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testkit.process import host_cpu_seconds  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
PREFIX = "fleet-bench-"
NETWORK = "fleet-bench"
SERVER_IMAGE = "localhost/fleet-server-debian12:latest"
DEVICE_IMAGE = "localhost/fleet-device-debian12:latest"
DEVICE_GROUPS = ("critical", "regular", "dev")
CONNECTIONS = ("podman", "ssh", "mitogen")
BUSY_LIMIT = 0.30  # other processes' share of the host's CPU above which a figure does not count
RECAP = re.compile(r"^(\S+)\s*:\s*(ok=\d+ .*)$", re.MULTILINE)  # PLAY RECAP: host : ok=N changed=N ...


class BenchError(Exception):
    """The benchmark cannot run or a measurement is invalid: one line, exit 1."""


def parse_devices(text: str) -> Tuple[int, ...]:
    try:
        sizes = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not sizes or min(sizes) < 1 or max(sizes) > 50:
        raise argparse.ArgumentTypeError("device counts must be between 1 and 50")
    return sizes


def parse_connections(text: str) -> Tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not chosen or set(chosen) - set(CONNECTIONS):
        raise argparse.ArgumentTypeError(f"connections are among {','.join(CONNECTIONS)}; got {text!r}")
    return chosen


def run_command(argv: Sequence[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    except FileNotFoundError:
        raise BenchError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv[:3])} did not finish in {timeout:g} s") from None
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv[:4])} failed: {result.stderr.strip()[-400:]}")
    return result


def our_containers() -> List[str]:
    names = run_command(["podman", "ps", "--all", "--format", "{{.Names}}"]).stdout.split()
    return [name for name in names if name.startswith(PREFIX)]


def remove_fleet() -> None:
    names = our_containers()
    if names:
        subprocess.run(["podman", "rm", "--force", "--time", "2", *names], capture_output=True, timeout=300)
    subprocess.run(["podman", "network", "rm", NETWORK], capture_output=True, timeout=60)


def image_ids() -> Dict[str, str]:
    """The images' IDs now: every run of this invocation uses them, even if the tags move on meanwhile."""
    return {
        tag: run_command(["podman", "image", "inspect", "--format", "{{.Id}}", tag]).stdout.strip()
        for tag in (SERVER_IMAGE, DEVICE_IMAGE)
    }


def start_fleet(size: int, ssh_dir: Path, images: Dict[str, str]) -> Tuple[str, List[str]]:
    """A fresh server and `size` devices, booted, reachable over SSH (ssh_dir/ssh_config)."""
    remove_fleet()
    run_command(["podman", "network", "create", NETWORK])
    server, devices = f"{PREFIX}server", [f"{PREFIX}device-{index:02d}" for index in range(1, size + 1)]

    def start(name: str) -> None:
        image = images[SERVER_IMAGE if name == server else DEVICE_IMAGE]
        run_command(["podman", "run", "--detach", "--name", name, "--hostname", name, "--network", NETWORK,
                     "--systemd=always", image])  # fmt: skip
        deadline, state = time.monotonic() + 180, ""  # 21 containers booting on 2 busy cores can take minutes
        while state not in ("running", "degraded"):
            if time.monotonic() > deadline:
                raise BenchError(f"systemd in {name} did not boot in 180 s (state: {state or 'unknown'})")
            time.sleep(0.5)
            state = subprocess.run(
                ["podman", "exec", name, "systemctl", "is-system-running"], capture_output=True, text=True, timeout=30
            ).stdout.strip()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(start, [server, *devices]))
    run_command(["bash", str(ROOT / "scripts" / "container-ssh.sh"), str(ssh_dir), NETWORK, server, *devices], 300)
    return server, devices


def write_inventory(directory: Path, server: str, devices: Sequence[str], connection: str, ssh_dir: Path) -> Path:
    """inventory/lab's shape, group_vars linked from inventory/; the fleet_pki files go to directory/pki."""
    (directory / "host_vars").mkdir(parents=True)
    (directory / "group_vars").symlink_to(ROOT / "inventory" / "group_vars")
    # As inventory/lab's server: the grafana role's preflight needs a password even without its package.
    (directory / "host_vars" / f"{server}.yml").write_text(
        "---\ngrafana_admin_password: admin\ngrafana_allow_default_admin_password: true\n"
    )
    reach = (
        {"ansible_connection": "containers.podman.podman"}
        if connection == "podman"
        else {"ansible_connection": "ansible.builtin.ssh", "ansible_ssh_common_args": f"-F {ssh_dir}/ssh_config"}
    )
    groups = {
        group: {"hosts": dict.fromkeys(devices[offset :: len(DEVICE_GROUPS)], {})}
        for offset, group in enumerate(DEVICE_GROUPS)
    }
    common = {"ansible_python_interpreter": "/usr/bin/python3", "ansible_become": False}
    inventory = {
        "all": {
            "vars": {**reach, **common, "fleet_pki_dir": str(directory / "pki")},
            "children": {"monitoring_server": {"hosts": {server: {}}}, "devices": {"children": groups}},
        }
    }
    path = directory / "hosts.json"  # JSON is YAML: the yaml inventory plugin reads it
    path.write_text(json.dumps(inventory, indent=1))
    return path


def mitogen_strategy_dir() -> str:
    code = "import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))"
    result = subprocess.run([str(VENV_BIN / "python"), "-c", code], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise BenchError("mitogen is not installed in the venv: make venv")
    return f"{result.stdout.strip()}/plugins/strategy"


def ansible_env(connection: str, workdir: Path) -> Dict[str, str]:
    """The project's ansible.cfg; a caller's ANSIBLE_* settings do not leak in; facts cached in workdir."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_CACHE_PLUGIN_CONNECTION=str(workdir / "facts"),
    )
    if connection == "mitogen":
        env.update(ANSIBLE_STRATEGY="mitogen_linear", ANSIBLE_STRATEGY_PLUGINS=mitogen_strategy_dir())
    return env


def containers_cpu_seconds() -> float:
    """CPU seconds used by our containers, from their cgroups (v1 cpuacct or v2 cpu.stat)."""
    names = our_containers()
    if not names:
        return 0.0
    paths = run_command(["podman", "inspect", "--format", "{{.State.CgroupPath}}", *names]).stdout.split()
    total = 0.0
    for path in paths:
        v1, v2 = Path(f"/sys/fs/cgroup/cpuacct{path}/cpuacct.usage"), Path(f"/sys/fs/cgroup{path}/cpu.stat")
        if v1.exists():
            total += int(v1.read_text()) / 1e9
        elif v2.exists():
            total += int(v2.read_text().split()[1]) / 1e6  # usage_usec
    return total


@dataclass
class Run:
    seconds: float
    controller_cpu: float
    containers_cpu: float
    others_share: float
    recap: Dict[str, Dict[str, int]]


def timed_playbook(inventory: Path, env: Dict[str, str], log: Path, timeout: float) -> Run:
    command = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), "--skip-tags", "grafana_install", "site.yml"]
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    host_before, containers_before, started = host_cpu_seconds()[0], containers_cpu_seconds(), time.monotonic()
    with log.open("w") as handle:
        try:
            returncode = subprocess.run(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=handle,
                                        stderr=subprocess.STDOUT, timeout=timeout, check=False).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            raise BenchError(f"ansible-playbook took more than {timeout:g} s; log {log}") from None
    seconds = time.monotonic() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    controller = children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime
    containers = containers_cpu_seconds() - containers_before
    others = max(0.0, host_cpu_seconds()[0] - host_before - controller - containers)
    text = log.read_text(errors="replace")
    recap = {
        host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
        for host, counts in RECAP.findall(text)
    }
    if returncode != 0 or any(counts["failed"] or counts["unreachable"] for counts in recap.values()):
        first_error = next((line for line in text.splitlines() if line.startswith(("fatal:", "[ERROR]"))), "")
        raise BenchError(f"ansible-playbook exited {returncode}: {first_error[:300]}; log {log}")
    return Run(seconds, controller, containers, others / (seconds * (os.cpu_count() or 1)), recap)


@dataclass
class Row:
    size: int
    connection: str
    first: Run
    rerun: Run


def measure(size: int, connection: str, images: Dict[str, str], workdir: Path, logs: Path, *, timeout: float) -> Row:
    directory = workdir / f"{size}-{connection}"
    server, devices = start_fleet(size, directory / "ssh", images)
    try:
        inventory = write_inventory(directory / "inventory", server, devices, connection, directory / "ssh")
        env = ansible_env(connection, directory)
        stem = logs / f"{size:02d}-{connection}"
        print(f"rollout: {size} devices over {connection}: first run", file=sys.stderr)
        first = timed_playbook(inventory, env, stem.with_suffix(".first.log"), timeout)
        rerun = timed_playbook(inventory, env, stem.with_suffix(".rerun.log"), timeout)
    finally:
        remove_fleet()
    changed = {host: counts["changed"] for host, counts in rerun.recap.items() if counts["changed"]}
    if changed:
        raise BenchError(f"the no-change rerun changed something: {changed}; log {stem}.rerun.log")
    return Row(size, connection, first, rerun)


def table(rows: Sequence[Row]) -> List[str]:
    lines = [
        f"{'devices':>7} {'connection':<10} {'run':<6} {'wall s':>7} {'s/device':>8} {'controller CPU s':>16} "
        f"{'containers CPU s':>16} {'others busy':>11}  tasks ok/skipped per device"
    ]
    for row in rows:
        for label, run in (("first", row.first), ("rerun", row.rerun)):
            device = next((counts for host, counts in run.recap.items() if "device" in host), {"ok": 0, "skipped": 0})
            tasks = f"{device['ok']}/{device['skipped']}"
            busy = f"{run.others_share:.0%}" + (" BUSY" if run.others_share >= BUSY_LIMIT else "")
            lines.append(
                f"{row.size:>7} {row.connection:<10} {label:<6} {run.seconds:>7.1f} {run.seconds / row.size:>8.2f} "
                f"{run.controller_cpu:>16.1f} {run.containers_cpu:>16.1f} {busy:>11}  {tasks}"
            )
    return lines


def targets(rows: Sequence[Row]) -> List[str]:
    lines = ["targets: no-change rerun on 20 devices <= 30 s, first run on 20 <= 90 s, <= 1 s per extra device"]
    for connection in dict.fromkeys(row.connection for row in rows):
        points = sorted((row.size, row) for row in rows if row.connection == connection)
        for size, row in points:
            if size == 20:
                lines.append(
                    f"  {connection:<8} rerun {row.rerun.seconds:.1f} s, first {row.first.seconds:.1f} s: "
                    f"{'PASS' if row.rerun.seconds <= 30 and row.first.seconds <= 90 else 'MISS'}"
                )
        for (small, low), (large, high) in zip(points, points[1:]):
            slope = (high.rerun.seconds - low.rerun.seconds) / (large - small)
            lines.append(
                f"  {connection:<8} rerun {small}->{large} devices: {slope:.2f} s per extra device: "
                f"{'PASS' if slope <= 1 else 'MISS'}"
            )
    if any(run.others_share >= BUSY_LIMIT for row in rows for run in (row.first, row.rerun)):
        lines.append(f"host too busy: other processes took >= {BUSY_LIMIT:.0%} of the CPU during runs marked BUSY")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--devices", type=parse_devices, default=(1, 5, 10, 20), help="device counts (1,5,10,20)")
    parser.add_argument("--connections", type=parse_connections, default=CONNECTIONS, help="podman,ssh,mitogen")
    parser.add_argument("--run-timeout", type=float, default=1200.0, help="bound of one playbook run, s (1200)")
    parser.add_argument("--logs", type=Path, help="directory for the playbook outputs (default: a new /tmp dir)")
    args = parser.parse_args(argv)
    if args.run_timeout <= 0:
        parser.error("--run-timeout must be > 0")
    logs = args.logs or Path(tempfile.mkdtemp(prefix="rollout-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))  # unwinds through clean-up
    rows: List[Row] = []
    workdir = Path(tempfile.mkdtemp(prefix="rollout-"))
    try:
        version = run_command([str(VENV_BIN / "ansible-playbook"), "--version"]).stdout.split("\n", 1)[0]
        # Built when missing or of another recipe (a few minutes each), else reused.
        run_command(["bash", str(ROOT / "scripts" / "images.sh"), "server-debian12", "device-debian12"], 1800)
        images = image_ids()
        for size in args.devices:
            for connection in args.connections:
                rows.append(measure(size, connection, images, workdir, logs, timeout=args.run_timeout))
    except BenchError as err:
        print("\n".join(table(rows)), file=sys.stderr)
        print(f"rollout: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rollout: interrupted; containers and network removed", file=sys.stderr)
        return 130
    finally:
        remove_fleet()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"rollout: {os.cpu_count()} CPUs; {version}; images {SERVER_IMAGE}, {DEVICE_IMAGE}; logs in {logs}")
    print("\n".join([*table(rows), *targets(rows)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
