#!/usr/bin/env python3
"""How long `ansible-playbook site.yml` takes onto 1, 5, 10 and 20 device containers, first run and
no-change rerun, over podman exec, SSH and SSH + Mitogen; the method, the commands and the results are
in docs/benchmarks.md. Exit 0 after the table and the targets, 1 when the benchmark cannot run, 2 on
bad options; the containers and their network (fleet-bench) are removed at the end, also on SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testkit.bench import BenchError, comma_list, machine, run_benchmark, verdict  # noqa: E402
from testkit.process import host_cpu_seconds, wait_until  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
NETWORK = "fleet-bench"  # also the containers' name prefix
SERVER_IMAGE = "localhost/fleet-server-debian12:latest"
DEVICE_IMAGE = "localhost/fleet-device-debian12:latest"
CONNECTIONS = ("podman", "ssh", "mitogen")
BUSY_LIMIT = 0.30  # other processes' share of the host's CPU above which a figure does not count
RECAP = re.compile(r"^(\S+)\s*:\s*(ok=\d+ .*)$", re.MULTILINE)  # PLAY RECAP: host : ok=N changed=N ...


def run_command(argv: Sequence[str], timeout: float = 120) -> str:
    """argv's stdout; a non-zero exit is a BenchError ending with its stderr (a timeout stays TimeoutExpired)."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv[:4])} failed: {' '.join(result.stderr.split())[-400:]}")
    return result.stdout


def remove_fleet() -> None:  # --force: with every container on the network
    subprocess.run(["podman", "network", "rm", "--force", "--time", "2", NETWORK], capture_output=True, timeout=300)


def image_ids() -> Dict[str, str]:
    """The images' IDs now: every run of this invocation uses them, even if the tags move on meanwhile."""
    inspect = ["podman", "image", "inspect", "--format", "{{.Id}}"]
    return {tag: run_command([*inspect, tag]).strip() for tag in (SERVER_IMAGE, DEVICE_IMAGE)}


def start_fleet(size: int, ssh_dir: Path, images: Dict[str, str]) -> Tuple[str, List[str]]:
    """A fresh server and `size` devices, booted, reachable over SSH (ssh_dir/ssh_config)."""
    remove_fleet()
    run_command(["podman", "network", "create", NETWORK])
    server, devices = f"{NETWORK}-server", [f"{NETWORK}-device-{index:02d}" for index in range(1, size + 1)]
    for name in [server, *devices]:
        image = images[SERVER_IMAGE if name == server else DEVICE_IMAGE]
        run_command(["podman", "run", "--detach", "--name", name, "--hostname", name, "--network", NETWORK,
                     "--systemd=always", image])  # fmt: skip
    for name in [server, *devices]:  # 21 containers booting on 2 busy cores can take minutes
        wait_until(partial(booted, name), 180, 0.5, message=f"systemd in {name} to boot")
    run_command(["bash", str(ROOT / "scripts" / "container-ssh.sh"), str(ssh_dir), NETWORK, server, *devices], 300)
    return server, devices


def booted(container: str) -> bool:
    state = ["podman", "exec", container, "systemctl", "is-system-running"]
    return subprocess.run(state, capture_output=True, text=True, timeout=30).stdout.strip() in ("running", "degraded")


def write_inventory(directory: Path, server: str, devices: Sequence[str], connection: str, ssh_dir: Path) -> Path:
    """inventory/lab's shape, group_vars linked from inventory/; the fleet_pki files go to directory/pki."""
    directory.mkdir(parents=True)
    (directory / "group_vars").symlink_to(ROOT / "inventory" / "group_vars")
    reach = {"ansible_connection": "containers.podman.podman"}
    if connection != "podman":
        reach = {"ansible_connection": "ansible.builtin.ssh", "ansible_ssh_common_args": f"-F {ssh_dir}/ssh_config"}
    variables = {**reach, "ansible_python_interpreter": "/usr/bin/python3", "ansible_become": False}
    # As inventory/lab's server: the grafana role's preflight needs a password even without its package.
    grafana = {"grafana_admin_password": "admin", "grafana_allow_default_admin_password": True}
    groups = {group: {"hosts": dict.fromkeys(devices[offset::3], {})}
              for offset, group in enumerate(("critical", "regular", "dev"))}  # fmt: skip
    children = {"monitoring_server": {"hosts": {server: grafana}}, "devices": {"children": groups}}
    inventory = {"all": {"vars": {**variables, "fleet_pki_dir": str(directory / "pki")}, "children": children}}
    path = directory / "hosts.json"  # JSON is YAML: the yaml inventory plugin reads it
    path.write_text(json.dumps(inventory, indent=1))
    return path


def ansible_env(connection: str, workdir: Path) -> Dict[str, str]:
    """The project's ansible.cfg; a caller's ANSIBLE_* settings do not leak in; facts cached in workdir."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", ANSIBLE_NOCOLOR="1")
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_CACHE_PLUGIN_CONNECTION=str(workdir / "facts"))
    if connection == "mitogen":  # its strategy plugin, from the venv that runs ansible-playbook
        where = run_command([str(VENV_BIN / "python"), "-c", "import ansible_mitogen as m; print(m.__path__[0])"])
        env.update(ANSIBLE_STRATEGY="mitogen_linear", ANSIBLE_STRATEGY_PLUGINS=f"{where.strip()}/plugins/strategy")
    return env


def containers_cpu_seconds() -> float:
    """CPU seconds used by our containers, from their cgroups: v1's cpuacct.usage (ns), else v2's cpu.stat."""
    names = run_command(["podman", "ps", "--all", "--quiet", "--filter", f"network={NETWORK}"]).split()
    paths = run_command(["podman", "inspect", "--format", "{{.State.CgroupPath}}", *names]).split() if names else []
    total = 0.0
    for path in paths:
        v1, v2 = Path(f"/sys/fs/cgroup/cpuacct{path}/cpuacct.usage"), Path(f"/sys/fs/cgroup{path}/cpu.stat")
        total += int(v1.read_text()) / 1e9 if v1.exists() else int(v2.read_text().split()[1]) / 1e6  # usage_usec
    return total


class Run(NamedTuple):
    seconds: float
    controller_cpu: float
    containers_cpu: float
    others_share: float
    recap: Dict[str, Dict[str, int]]


def timed_playbook(inventory: Path, env: Dict[str, str], log: Path, timeout: float) -> Run:
    command = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), "--skip-tags", "grafana_install", "site.yml"]
    before = os.times()  # its children's CPU: ansible-playbook and its forks
    host_before, containers_before, started = host_cpu_seconds()[0], containers_cpu_seconds(), time.monotonic()
    with log.open("w") as output:
        returncode = subprocess.run(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                    stderr=subprocess.STDOUT, timeout=timeout).returncode  # fmt: skip
    seconds, after = time.monotonic() - started, os.times()
    controller = after.children_user + after.children_system - before.children_user - before.children_system
    containers = containers_cpu_seconds() - containers_before
    others = max(0.0, host_cpu_seconds()[0] - host_before - controller - containers)
    text = log.read_text(errors="replace")
    recap = {host: {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", counts)}
             for host, counts in RECAP.findall(text)}  # fmt: skip
    if returncode != 0 or any(counts["failed"] or counts["unreachable"] for counts in recap.values()):
        first_error = next((line for line in text.splitlines() if line.startswith(("fatal:", "[ERROR]"))), "")
        raise BenchError(f"ansible-playbook exited {returncode}: {first_error[:300]}; log {log}")
    return Run(seconds, controller, containers, others / (seconds * (os.cpu_count() or 1)), recap)


def table_line(size: int, connection: str, label: str, run: Run) -> str:
    device = next((counts for host, counts in run.recap.items() if "device" in host), {"ok": 0, "skipped": 0})
    busy = f"{run.others_share:.0%}" + (" BUSY" if run.others_share >= BUSY_LIMIT else "")
    return (
        f"{size:>7} {connection:<10} {label:<6} {run.seconds:>7.1f} {run.seconds / size:>8.2f} "
        f"{run.controller_cpu:>16.1f} {run.containers_cpu:>16.1f} {busy:>11}  {device['ok']}/{device['skipped']}"
    )


def targets(rows: Sequence[Tuple[int, str, Run, Run]]) -> Iterator[str]:
    """rows: device count, connection, first run, rerun."""
    yield "targets: no-change rerun on 20 devices <= 30 s, first run on 20 <= 90 s, <= 1 s per extra device"
    for connection in dict.fromkeys(row[1] for row in rows):
        runs = {size: (first.seconds, rerun.seconds) for size, used, first, rerun in rows if used == connection}
        label, sizes = f"  {connection:<8} rerun", sorted(runs)
        if 20 in runs:
            first, rerun = runs[20]
            yield f"{label} {rerun:.1f} s, first {first:.1f} s: {verdict(rerun <= 30 and first <= 90)}"
        for low, high in zip(sizes, sizes[1:]):
            slope = (runs[high][1] - runs[low][1]) / (high - low)
            yield f"{label} {low}->{high} devices: {slope:.2f} s per extra device: {verdict(slope <= 1)}"
    if any(run.others_share >= BUSY_LIMIT for row in rows for run in row[2:]):
        yield f"host too busy: other processes took >= {BUSY_LIMIT:.0%} of the CPU during runs marked BUSY"


def measure(args: argparse.Namespace) -> Iterator[str]:
    logs = args.logs or Path(tempfile.mkdtemp(prefix="rollout-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    version = run_command([str(VENV_BIN / "ansible-playbook"), "--version"]).split("\n", 1)[0]
    # Built when missing or of another recipe (a few minutes each), else reused.
    run_command(["bash", str(ROOT / "scripts" / "images.sh"), "server-debian12", "device-debian12"], 1800)
    images = image_ids()
    yield f"machine: {machine()}; {version}; images {SERVER_IMAGE}, {DEVICE_IMAGE}; logs in {logs}"
    yield (f"{'devices':>7} {'connection':<10} {'run':<6} {'wall s':>7} {'s/device':>8} {'controller CPU s':>16} "
           f"{'containers CPU s':>16} {'others busy':>11}  tasks ok/skipped per device")  # fmt: skip
    rows: List[Tuple[int, str, Run, Run]] = []
    workdir = Path(tempfile.mkdtemp(prefix="rollout-"))
    try:
        for size in dict.fromkeys(args.devices):
            for connection in dict.fromkeys(args.connections):
                directory, log = workdir / f"{size}-{connection}", logs / f"{size:02d}-{connection}"
                server, devices = start_fleet(size, directory / "ssh", images)
                inventory = write_inventory(directory / "inventory", server, devices, connection, directory / "ssh")
                env = ansible_env(connection, directory)
                print(f"rollout: {size} devices over {connection}: first run", file=sys.stderr)
                first = timed_playbook(inventory, env, log.with_suffix(".first.log"), args.run_timeout)
                rerun = timed_playbook(inventory, env, log.with_suffix(".rerun.log"), args.run_timeout)
                yield from (table_line(size, connection, "first", first), table_line(size, connection, "rerun", rerun))
                changed = {host: counts["changed"] for host, counts in rerun.recap.items() if counts["changed"]}
                if changed:
                    raise BenchError(f"the no-change rerun changed something: {changed}; log {log}.rerun.log")
                rows.append((size, connection, first, rerun))
    finally:
        remove_fleet()
        shutil.rmtree(workdir, ignore_errors=True)
    yield from targets(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    devices = comma_list(int, lambda sizes: 1 <= min(sizes) <= max(sizes) <= 50, "expected device counts from 1 to 50")
    connections = comma_list(str, set(CONNECTIONS).issuperset, f"expected some of {','.join(CONNECTIONS)}")
    parser.add_argument("--devices", type=devices, default=[1, 5, 10, 20], help="device counts (1,5,10,20)")
    parser.add_argument("--connections", type=connections, default=list(CONNECTIONS), help="podman,ssh,mitogen")
    parser.add_argument("--run-timeout", type=float, default=1200.0, help="bound of one playbook run, s (1200)")
    parser.add_argument("--logs", type=Path, help="directory for the playbook outputs (default: a new /tmp dir)")
    args = parser.parse_args(argv)
    if not args.run_timeout > 0:
        parser.error("--run-timeout must be > 0")
    return run_benchmark("rollout", lambda: measure(args), errors=(subprocess.TimeoutExpired,))


if __name__ == "__main__":
    sys.exit(main())
