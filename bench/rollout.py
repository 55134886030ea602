#!/usr/bin/env python3
"""How long `ansible-playbook site.yml` takes onto 1, 5, 10 and 20 devices: first run and no-change rerun,
with the project's ansible.cfg and with Ansible's defaults, side by side in one invocation.

For each size and each configuration the benchmark starts fresh podman systemd containers (one server from
localhost/fleet-server-debian12, N devices from localhost/fleet-device-debian12) on its own network
`fleet-bench`, writes an inventory like inventory/lab's (group_vars linked from inventory/, devices spread
over critical/regular/dev), and times, from the repository root:

  first run   ansible-playbook -i INVENTORY --skip-tags grafana_install site.yml   on the fresh containers
  rerun       the same command again on the same containers; its PLAY RECAP must show changed=0

Configurations:
  project     ANSIBLE_CONFIG=ansible.cfg (forks 50, smart gathering with a jsonfile fact cache, profile_tasks);
              the fact cache goes to a temp dir (ANSIBLE_CACHE_PLUGIN_CONNECTION), not .cache/facts
  defaults    ANSIBLE_CONFIG=an empty file, ANSIBLE_ROLES_PATH=roles: Ansible's own defaults (forks 5, ...)

Targets (issue 6): the no-change rerun on 20 devices takes <= 20 s, and each extra device adds <= 1 s
(the slope between consecutive sizes). Prints a table and PASS/MISS; exits 0 either way, 1 only if the
benchmark cannot run (no podman or image, a rollout that keeps failing, a rerun that changes something).
Containers (prefix fleet-bench-) and the network are removed at the end, also on SIGINT/SIGTERM.

    .venv/bin/python bench/rollout.py                  # sizes 1,5,10,20; project and defaults
    .venv/bin/python bench/rollout.py --quick          # sizes 1,2; project config only
    .venv/bin/python bench/rollout.py --sizes 20 --configs project
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PLAYBOOK = "site.yml"
PREFIX = "fleet-bench-"
NETWORK = "fleet-bench"
LABEL = "fleet-bench=1"
SERVER_IMAGE = "localhost/fleet-server-debian12:latest"
DEVICE_IMAGE = "localhost/fleet-device-debian12:latest"
DEVICE_GROUPS = ("critical", "regular", "dev")
CONFIGS = ("project", "defaults")
SKIP_TAGS = "grafana_install"  # Grafana's package repository is unreachable from the containers

TARGET_RERUN_SIZE = 20
TARGET_RERUN_SECONDS = 20.0
TARGET_SLOPE_SECONDS = 1.0

RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)\s+"
    r"failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)",
    re.MULTILINE,
)
# profile_tasks' summary: "role : Task name ---------- 1.23s"
PROFILE_LINE = re.compile(r"^(?P<task>\S.*?) -{3,} (?P<seconds>\d+\.\d+)s\s*$", re.MULTILINE)
# profile_tasks' stamp at each task's start: "(previous task's duration)  elapsed since the start"
PROFILE_STAMP = re.compile(r"\(\d+:\d\d:\d\d\.\d+\)\s+(?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d\.\d+)")
PLAY_HEADER = re.compile(r"^PLAY \[(?P<name>.*)\] \*+$")


TASK_HEADER = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(?P<name>.*)\] \*+$")


def task_spans(text: str) -> List[Tuple[str, str, float]]:
    """(play, task, seconds) for every task and handler in order, from profile_tasks' stamps (each task's
    start); a skipped task shows as a few milliseconds. Empty without profile_tasks."""
    starts: List[Tuple[str, str, float]] = []
    play, task = "", None
    end = None
    for line in text.splitlines():
        header = PLAY_HEADER.match(line)
        if header:
            play = header["name"]
            continue
        header = TASK_HEADER.match(line)
        if header:
            task = header["name"]
            continue
        stamp = PROFILE_STAMP.search(line)
        if stamp:
            end = int(stamp["h"]) * 3600 + int(stamp["m"]) * 60 + float(stamp["s"])
            if task is not None:
                starts.append((play, task, end))
                task = None
    if end is None:
        return []
    bounds = [start for _, _, start in starts[1:]] + [end]
    return [(play, name, stop - start) for (play, name, start), stop in zip(starts, bounds)]


def play_times(text: str) -> List[Tuple[str, float]]:
    """(play, seconds) in order, summed from task_spans."""
    totals: Dict[str, float] = {}
    for play, _, seconds in task_spans(text):
        totals[play] = totals.get(play, 0.0) + seconds
    return list(totals.items())


class BenchError(Exception):
    """The benchmark cannot run or its measurement is invalid: one message, exit 1."""


@dataclass(frozen=True)
class Options:
    sizes: Tuple[int, ...]
    configs: Tuple[str, ...]
    retries: int
    retry_wait: float
    run_timeout: float
    logs: Path
    quick: bool


def parse_sizes(text: str) -> Tuple[int, ...]:
    try:
        # In the given order (largest first gets the target's size measured first); duplicates dropped.
        sizes = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not sizes or min(sizes) < 1 or max(sizes) > 99:
        raise argparse.ArgumentTypeError("sizes must be between 1 and 99 devices")
    return sizes


def parse_configs(text: str) -> Tuple[str, ...]:
    configs = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [config for config in configs if config not in CONFIGS]
    if not configs or unknown:
        raise argparse.ArgumentTypeError(f"configs must be among {', '.join(CONFIGS)}; got {text!r}")
    return configs


def parse_options(argv: Optional[Sequence[str]] = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Time ansible-playbook site.yml onto N device containers: first run and no-change rerun, "
        "with the project's ansible.cfg and with Ansible's defaults."
    )
    parser.add_argument("--sizes", type=parse_sizes, help="device counts, comma-separated (default 1,5,10,20)")
    parser.add_argument("--configs", type=parse_configs, help="project,defaults (default both; project with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 1,2 with the project config only")
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="fresh attempts after a failed rollout, for roles edited mid-run (default 1)",
    )
    parser.add_argument("--retry-wait", type=float, default=120.0, help="seconds before a retry (default 120)")
    parser.add_argument("--run-timeout", type=float, default=1800.0, help="bound of one playbook run (default 1800)")
    parser.add_argument("--logs", type=Path, help="directory for the playbook outputs (default: a new /tmp dir)")
    args = parser.parse_args(argv)
    if args.retries < 0 or args.retry_wait < 0 or args.run_timeout <= 0:
        parser.error("--retries and --retry-wait must be >= 0, --run-timeout > 0")
    logs = args.logs or Path(tempfile.mkdtemp(prefix="rollout-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    return Options(
        sizes=args.sizes or ((1, 2) if args.quick else (1, 5, 10, 20)),
        configs=args.configs or (("project",) if args.quick else CONFIGS),
        retries=args.retries,
        retry_wait=args.retry_wait,
        run_timeout=args.run_timeout,
        logs=logs,
        quick=args.quick,
    )


# --------------------------------------------------------------------------------------------
# Containers and network (only ours: the fleet-bench- prefix and label)
# --------------------------------------------------------------------------------------------


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise BenchError("podman is not installed") from None
    except subprocess.TimeoutExpired:
        raise BenchError(f"podman {' '.join(args[:2])} did not finish in {timeout:g} s") from None
    if check and result.returncode != 0:
        raise BenchError(f"podman {' '.join(args)} failed: {result.stderr.strip()[-500:]}")
    return result


def our_containers() -> List[str]:
    result = podman("ps", "--all", "--filter", f"label={LABEL}", "--format", "{{.Names}}")
    return [name for name in result.stdout.split() if name.startswith(PREFIX)]


def remove_containers(names: Sequence[str]) -> None:
    names = [name for name in names if name.startswith(PREFIX)]
    if names:
        podman("rm", "--force", "--ignore", "--time", "2", *names, timeout=180, check=False)


def ensure_network() -> None:
    if podman("network", "exists", NETWORK, check=False).returncode != 0:
        podman("network", "create", "--label", LABEL, NETWORK)


def remove_network() -> None:
    if podman("network", "exists", NETWORK, check=False).returncode == 0:
        # No --force: that would also remove any container attached to it; ours are gone by now.
        podman("network", "rm", NETWORK, timeout=60, check=False)


def check_images() -> None:
    for image in (SERVER_IMAGE, DEVICE_IMAGE):
        if podman("image", "exists", image, check=False).returncode != 0:
            raise BenchError(f"image {image} is missing: build it with scripts/images.sh")


def start_container(name: str, image: str) -> None:
    podman(
        "run", "--detach", "--quiet", "--name", name, "--hostname", name, "--network", NETWORK,
        "--systemd=always", "--label", LABEL, image,
    )  # fmt: skip


def wait_for_systemd(name: str, timeout: float = 180) -> None:
    """Bounded: 21 containers booting at once on a loaded 2-core host can take minutes."""
    state = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = podman("exec", name, "systemctl", "is-system-running", timeout=30, check=False).stdout.strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.5)
    raise BenchError(f"systemd in {name} did not finish booting in {timeout:g} s (state: {state or 'unknown'})")


@dataclass
class Lab:
    """One server and `size` devices, fresh."""

    size: int
    server: str = f"{PREFIX}server"
    devices: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.devices = [f"{PREFIX}device-{index:02d}" for index in range(1, self.size + 1)]

    @property
    def names(self) -> List[str]:
        return [self.server, *self.devices]

    def start(self) -> None:
        remove_containers(our_containers())  # a previous attempt's leftovers
        ensure_network()
        jobs = [(self.server, SERVER_IMAGE)] + [(name, DEVICE_IMAGE) for name in self.devices]
        # Few workers: podman run is mostly CPU on a 2-core host, more threads only queue.
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda job: start_container(*job), jobs))
            list(pool.map(wait_for_systemd, self.names))

    def stop(self) -> None:
        remove_containers(self.names)

    def write_inventory(self, directory: Path, pki: Path) -> Path:
        """inventory/lab's shape; group_vars linked from inventory/ so devices get their interval and job.
        The fleet_pki role's controller directory (CA, certificates, passwords) is pki: a first run issues
        everything afresh, and the project's .cache/pki is left alone."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "group_vars").symlink_to(ROOT / "inventory" / "group_vars")
        host_vars = directory / "host_vars"
        host_vars.mkdir()
        # Like inventory/lab's server: the grafana role's preflight needs a password even without its package.
        (host_vars / f"{self.server}.yml").write_text(
            "---\ngrafana_admin_password: admin\ngrafana_allow_default_admin_password: true\n"
        )
        groups: Dict[str, List[str]] = {group: [] for group in DEVICE_GROUPS}
        for index, name in enumerate(self.devices):
            groups[DEVICE_GROUPS[index % len(DEVICE_GROUPS)]].append(name)
        lines = [
            "---",
            "all:",
            "  vars:",
            "    ansible_connection: containers.podman.podman",
            "    ansible_python_interpreter: /usr/bin/python3",
            "    ansible_become: false",
            f"    fleet_pki_dir: {pki}",
            "  children:",
            "    monitoring_server:",
            "      hosts:",
            f"        {self.server}:",
            "    devices:",
            "      children:",
        ]
        for group, hosts in groups.items():
            lines.append(f"        {group}:")
            lines.append("          hosts:" if hosts else "          hosts: {}")
            lines.extend(f"            {host}:" for host in hosts)
        path = directory / "hosts.yml"
        path.write_text("\n".join(lines) + "\n")
        return path


def exec_latency_ms(name: str, samples: int = 5) -> float:
    """Median wall time of one `podman exec NAME true`: the floor of every remote step of a task."""
    times = []
    for _ in range(samples):
        started = time.monotonic()
        podman("exec", name, "true", timeout=30)
        times.append(1000 * (time.monotonic() - started))
    return statistics.median(times)


# --------------------------------------------------------------------------------------------
# Playbook runs
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    recap: Dict[str, Dict[str, int]]
    load_before: Tuple[float, float, float]
    load_after: Tuple[float, float, float]
    returncode: int
    log: Path
    profile: List[Tuple[str, float]] = field(default_factory=list)
    plays: List[Tuple[str, float]] = field(default_factory=list)

    def total(self, key: str) -> int:
        return sum(counts[key] for counts in self.recap.values())

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.total("failed") == 0 and self.total("unreachable") == 0


def parse_run(
    log: Path, seconds: float, load_before: Tuple[float, float, float], load_after: Tuple[float, float, float], rc: int
) -> Run:
    """A run's PLAY RECAP (per host), and profile_tasks' per-task times and play split when present."""
    text = log.read_text(errors="replace")
    recap = {
        match["host"]: {key: int(value) for key, value in match.groupdict().items() if key != "host"}
        for match in RECAP.finditer(text)
    }
    profile = [(match["task"].strip(), float(match["seconds"])) for match in PROFILE_LINE.finditer(text)]
    return Run(seconds, recap, load_before, load_after, rc, log, profile, play_times(text))


def ansible_env(config: str, workdir: Path) -> Dict[str, str]:
    """A caller's ANSIBLE_* settings must not leak into either configuration."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ANSIBLE_", "PROFILE_TASKS_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_NOCOLOR"] = "1"
    if config == "project":
        env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
        env["ANSIBLE_CACHE_PLUGIN_CONNECTION"] = str(workdir / "facts")
        # Output only: every task in profile_tasks' summary, not just the 20 slowest.
        env["PROFILE_TASKS_TASK_OUTPUT_LIMIT"] = "all"
    else:
        empty = workdir / "empty.cfg"
        empty.write_text("")
        env["ANSIBLE_CONFIG"] = str(empty)
        env["ANSIBLE_ROLES_PATH"] = str(ROOT / "roles")
    return env


class Playbooks:
    """Runs ansible-playbook, one at a time, and can stop the running one from a signal handler."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.current: Optional[subprocess.Popen] = None

    def run(self, inventory: Path, env: Dict[str, str], log: Path) -> Run:
        command = [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), "--skip-tags", SKIP_TAGS, PLAYBOOK]
        load_before = os.getloadavg()
        started = time.monotonic()
        with log.open("w") as handle:
            handle.write(f"# {' '.join(command)}\n# ANSIBLE_CONFIG={env['ANSIBLE_CONFIG']}\n")
            handle.flush()
            self.current = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT
            )
            try:
                returncode = self.current.wait(self.options.run_timeout)
            except subprocess.TimeoutExpired:
                self.stop()
                limit = self.options.run_timeout
                raise BenchError(f"ansible-playbook took more than {limit:g} s; log: {log}") from None
            finally:
                self.current = None
        seconds, load_after = time.monotonic() - started, os.getloadavg()
        with log.open("a") as handle:  # the log alone then holds every figure of the table's row
            handle.write(
                f"# rollout: exit {returncode}, wall {seconds:.1f} s, load {load_text(load_before)} before, "
                f"{load_text(load_after)} after\n"
            )
        return parse_run(log, seconds, load_before, load_after, returncode)

    def stop(self) -> None:
        process = self.current
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class Measurement:
    size: int
    config: str
    first: Run
    rerun: Run
    exec_ms: float
    attempts: int


def failure_summary(run: Run, expected_hosts: Sequence[str]) -> str:
    missing = [host for host in expected_hosts if host not in run.recap]
    lines = run.log.read_text(errors="replace").splitlines()
    first_error = next((line for line in lines if line.startswith(("fatal:", "[ERROR]"))), "no fatal line")
    tail = "\n".join(lines[-25:])
    return (
        f"exit {run.returncode}, failed={run.total('failed')}, unreachable={run.total('unreachable')}, "
        f"hosts missing from the recap: {len(missing)}: {first_error[:400]}; log {run.log}; last lines:\n{tail}"
    )


def measure(size: int, config: str, playbooks: Playbooks, workdir: Path, options: Options) -> Measurement:
    """First run on fresh containers, then the rerun; a failure (roles edited mid-run) gets a fresh retry."""
    problem = ""
    for attempt in range(1, options.retries + 2):
        if attempt > 1:
            print(f"rollout: {problem.splitlines()[0]}; retrying in {options.retry_wait:g} s", file=sys.stderr)
            time.sleep(options.retry_wait)
        lab = Lab(size)
        run_dir = workdir / f"{size}-{config}-{attempt}"
        try:
            print(f"rollout: {size} devices, {config} config, attempt {attempt}: starting containers", file=sys.stderr)
            lab.start()
            inventory = lab.write_inventory(run_dir / "inventory", run_dir / "pki")
            env = ansible_env(config, run_dir)
            stem = options.logs / f"{size:02d}-devices-{config}-attempt{attempt}"
            first = playbooks.run(inventory, env, stem.with_suffix(".first.log"))
            if not first.ok or len(first.recap) != size + 1:
                problem = f"first run failed: {failure_summary(first, lab.names)}"
                continue
            exec_ms = exec_latency_ms(lab.devices[0])
            rerun = playbooks.run(inventory, env, stem.with_suffix(".rerun.log"))
            if not rerun.ok or len(rerun.recap) != size + 1:
                problem = f"rerun failed: {failure_summary(rerun, lab.names)}"
                continue
            if rerun.total("changed"):
                changed = {host: counts["changed"] for host, counts in rerun.recap.items() if counts["changed"]}
                problem = f"the no-change rerun changed something: changed={changed}; log {rerun.log}"
                continue
            print(
                f"rollout: {size} devices, {config}: first {first.seconds:.1f} s, rerun {rerun.seconds:.1f} s "
                f"(load {load_text(first.load_before)} before the first run, {load_text(rerun.load_after)} after)",
                file=sys.stderr,
            )
            return Measurement(size, config, first, rerun, exec_ms, attempt)
        finally:
            lab.stop()
    raise BenchError(f"{size} devices, {config} config, after {options.retries + 1} attempts: {problem}")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def load_text(load: Tuple[float, float, float]) -> str:
    return "/".join(f"{value:.2f}" for value in load)


def table(measurements: List[Measurement]) -> List[str]:
    lines = [
        f"{'devices':>7} {'config':<9} {'first s':>8} {'rerun s':>8} {'rerun server/devices play s':>27} "
        f"{'rerun tasks ok/skip':>19} "
        f"{'exec ms':>7} {'load 1/5/15 before first':>25} {'load before rerun':>18} {'load after rerun':>17}"
    ]
    for item in sorted(measurements, key=lambda m: (m.size, CONFIGS.index(m.config))):
        tasks = f"{item.rerun.total('ok')}/{item.rerun.total('skipped')}"
        # Only with profile_tasks (the project's config): its stamps split the run by play.
        plays = "/".join(f"{seconds:.1f}" for _, seconds in item.rerun.plays) or "-"
        lines.append(
            f"{item.size:>7} {item.config:<9} {item.first.seconds:>8.1f} {item.rerun.seconds:>8.1f} {plays:>27} "
            f"{tasks:>19} "
            f"{item.exec_ms:>7.0f} {load_text(item.first.load_before):>25} {load_text(item.rerun.load_before):>18} "
            f"{load_text(item.rerun.load_after):>17}"
        )
    return lines


def slopes(points: List[Tuple[int, float]]) -> List[Tuple[int, int, float]]:
    return [(a, b, (tb - ta) / (b - a)) for (a, ta), (b, tb) in zip(points, points[1:])]


def targets(measurements: List[Measurement], configs: Sequence[str]) -> List[str]:
    lines = ["targets (no-change rerun)"]
    for config in configs:
        points = sorted((m.size, m.rerun.seconds) for m in measurements if m.config == config)
        at_target = [seconds for size, seconds in points if size == TARGET_RERUN_SIZE]
        if at_target:
            lines.append(
                f"  {config:<9} rerun on {TARGET_RERUN_SIZE} devices = {at_target[0]:.1f} s   target <= "
                f"{TARGET_RERUN_SECONDS:g} s   {verdict(at_target[0] <= TARGET_RERUN_SECONDS)}"
            )
        else:
            lines.append(f"  {config:<9} rerun on {TARGET_RERUN_SIZE} devices: not measured (add it to --sizes)")
        pairs = slopes(points)
        if not pairs:
            lines.append(f"  {config:<9} slope: needs two sizes")
            continue
        for small, large, slope in pairs:
            lines.append(
                f"  {config:<9} slope {small}->{large} devices = {slope:.2f} s/device   target <= "
                f"{TARGET_SLOPE_SECONDS:g}   {verdict(slope <= TARGET_SLOPE_SECONDS)}"
            )
        sizes = [size for size, _ in points]
        if len(points) > 2:
            overall = statistics.linear_regression(sizes, [seconds for _, seconds in points]).slope
            lines.append(
                f"  {config:<9} least-squares slope over {len(points)} sizes = {overall:.2f} s/device   target <= "
                f"{TARGET_SLOPE_SECONDS:g}   {verdict(overall <= TARGET_SLOPE_SECONDS)}"
            )
    return lines


def profile_summary(measurements: List[Measurement], top: int = 8) -> List[str]:
    """Where the largest profiled rerun spends its time, per play, from profile_tasks' stamps."""
    profiled = [m for m in measurements if m.rerun.plays]
    if not profiled:
        return []
    largest = max(profiled, key=lambda m: m.size)
    spans = task_spans(largest.rerun.log.read_text(errors="replace"))
    lines = [
        f"where the {largest.size}-device {largest.config} rerun spends its {largest.rerun.seconds:.1f} s "
        f"(profile_tasks; the remainder is ansible-playbook start-up and inventory parsing)"
    ]
    for play, seconds in largest.rerun.plays:
        tasks = sorted((span for span in spans if span[0] == play), key=lambda span: -span[2])
        ran = [span for span in tasks if span[2] >= 0.1]  # skipped tasks take a few ms
        lines.append(
            f"  play '{play}': {seconds:.1f} s, {len(tasks)} tasks and handlers, {len(ran)} of them >= 0.1 s "
            f"(mean {sum(span[2] for span in ran) / max(1, len(ran)):.2f} s); slowest:"
        )
        lines.extend(f"    {span[2]:6.2f} s  {span[1]}" for span in tasks[:top])
    return lines


def header(options: Options) -> List[str]:
    ansible = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "--version"], capture_output=True, text=True, timeout=60, check=False
    ).stdout.splitlines()
    podman_version = podman("--version").stdout.strip()
    return [
        f"rollout: {' '.join(sys.argv[1:]) or '(defaults)'}",
        f"machine: {os.cpu_count()} CPUs; {ansible[0] if ansible else 'ansible-playbook ?'}; {podman_version}",
        f"sizes {','.join(map(str, options.sizes))} devices + 1 server; configs {','.join(options.configs)}; "
        f"images {SERVER_IMAGE}, {DEVICE_IMAGE}; --skip-tags {SKIP_TAGS}; logs in {options.logs}",
    ]


def run(options: Options) -> List[str]:
    if not (VENV_BIN / "ansible-playbook").exists():
        raise BenchError(f"{VENV_BIN / 'ansible-playbook'} not found: create the venv first (make venv)")
    check_images()
    lines = header(options)
    playbooks = Playbooks(options)
    install_signal_handlers(playbooks)
    measurements: List[Measurement] = []
    try:
        with tempfile.TemporaryDirectory(prefix="rollout-") as tmp:
            for size in options.sizes:
                for config in options.configs:
                    measurements.append(measure(size, config, playbooks, Path(tmp), options))
    except BaseException:
        if measurements:  # what was measured before the failure or the signal is still worth having
            print("\n".join(["rollout: measured so far:", *table(measurements)]), file=sys.stderr)
        raise
    finally:
        playbooks.stop()
        remove_containers(our_containers())
        remove_network()
    lines += ["", *table(measurements), "", *targets(measurements, options.configs)]
    profile = profile_summary(measurements)
    return lines + ([""] + profile if profile else [])


def install_signal_handlers(playbooks: Playbooks) -> None:
    """SIGINT/SIGTERM stop the running playbook, then unwind through the clean-up in run()."""

    def handler(signum: int, _frame: object) -> None:
        playbooks.stop()
        raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_options(argv)
    try:
        lines = run(options)
    except BenchError as err:
        print(f"rollout: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rollout: interrupted; containers and network removed", file=sys.stderr)
        return 130
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
