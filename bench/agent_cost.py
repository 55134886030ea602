#!/usr/bin/env python3
"""What the push agent costs a device (files/push_monitor.py plain, over TLS + basic auth and in remote-write
mode) side by side with a naive agent (bench/naive_agent.py) and node_exporter, in one window; the method,
the commands and the results are in docs/benchmarks.md. Prints a table and the ratios against the targets,
PASS or MISS; exits 0 either way, 1 when the benchmark cannot run, 2 on bad options."""

from __future__ import annotations

import argparse
import math
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    from testkit.bench import BenchError, machine, require_binaries, run_benchmark, verdict  # noqa: I001 (2 lines, not 9)
    from testkit.pki import web_config
    from testkit.process import free_port, host_cpu_seconds, proc_status, process_cpu_seconds, start_daemon
    from testkit.process import stop_process, wait_until
    from testkit.server import PROMETHEUS_BIN, PUSHGATEWAY_BIN, Prometheus, Pushgateway
    from testkit.web import Endpoint
except ImportError as missing:
    sys.exit(f"agent_cost: error: {missing}: run with the project's .venv/bin/python (make venv)")

AGENT = ROOT / "files" / "push_monitor.py"
NAIVE_AGENT = ROOT / "bench" / "naive_agent.py"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
NODE_EXPORTER_BIN = "/usr/bin/prometheus-node-exporter"
SLEEP_BIN = "/usr/bin/sleep"  # the idle processes, under many names
JOB = "bench"
IDLE_NAMES = 25  # distinct app names among the idle processes, as on a real host
TLS_USER = "bench-device"

TARGET_VS_NODE_EXPORTER = 0.6
TARGET_VS_NAIVE = 0.5
TARGET_RW_VS_AGENT = 1.0
TARGET_PEAK_RSS_BYTES = 30_000_000  # decimal MB: the stricter reading
# Above this percentage of all CPU time busy, the subjects compete for the cores and the Go binary and the
# Python agents suffer unequally: the figures are printed but do not count.
MAX_HOST_BUSY_PERCENT = 30

# A given share of one core in 100 ms slices under its own name (PR_SET_NAME), until its deadline.
BUSY_CODE = """
import ctypes, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
share, deadline = float(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    spin_until = time.monotonic() + 0.1 * share
    while time.monotonic() < spin_until:
        pass
    time.sleep(0.1 * (1 - share))
"""


def parse_options(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    python = str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable)
    parser.add_argument("--cycles", type=int, help="measured cycles (default 30; 4 with --quick)")
    parser.add_argument("--interval", type=float, default=1.0, help="push and scrape interval in seconds (default 1)")
    parser.add_argument("--python", default=python, help="interpreter of the agents (default: the project's .venv)")
    parser.add_argument("--send-interval", type=float, help="the remote-write agent's, a whole number of intervals "
                        "(default 5 s, the agent's at 1 s; the interval with --quick)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 cycles, >= 150 processes")
    options = parser.parse_args(argv)
    options.cycles = options.cycles if options.cycles is not None else (4 if options.quick else 30)
    if options.cycles < 1:
        parser.error("--cycles must be >= 1")
    if not math.isfinite(options.interval) or not 0.1 <= options.interval <= 60:
        parser.error("--interval must be between 0.1 and 60 seconds")
    if options.send_interval is None:
        options.send_interval = options.interval if options.quick else 5.0
    per_send = options.send_interval / options.interval
    if not math.isfinite(per_send) or per_send < 1 or abs(per_send - round(per_send)) > 1e-9:
        parser.error("--send-interval must be a whole number of intervals")
    options.warmup, options.processes, options.busy = (2, 150, 2) if options.quick else (3, 300, 4)
    return options


def process_count() -> int:
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit())


def agents_python_version(python: str) -> str:
    # The agents' interpreter must have their packages: one clear line here instead of a dead subject later.
    code = "import sys, psutil, prometheus_client, snappy; print(sys.version.split()[0])"
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise BenchError(f"{python} lacks the agents' packages (make venv): {result.stderr.strip()[-200:]}")
    return result.stdout.strip()


def accepted(endpoint: Endpoint, metric: str, handler: str) -> int:
    """Requests the server answered with a 2xx on handler: its pusher's cycles (one server per pusher)."""
    return int(endpoint.counter(metric, f'handler="{handler}"', 'code="2'))


@dataclass
class Subject:
    label: str
    process: Popen
    count_cycles: Callable[[], int]
    log: Path
    pushed_at: float = 0.0  # monotonic time right after one of its cycles
    start: Tuple[int, float] = (0, 0.0)  # cycles and CPU seconds when the window opened
    cpu_used: float = 0.0
    cycles: int = 0
    peak_rss: int = 0

    def snapshot_start(self) -> None:
        self.start = self.count_cycles(), process_cpu_seconds(self.process.pid)

    def snapshot_end(self) -> None:
        self.cycles = self.count_cycles() - self.start[0]
        self.cpu_used = process_cpu_seconds(self.process.pid) - self.start[1]
        self.peak_rss = int(proc_status(self.process.pid, "VmHWM").split()[0]) * 1024  # "<n> kB"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
            raise BenchError(f"{self.label} exited with status {self.process.returncode}: {tail.strip()}")

    @property
    def cpu_ms_per_cycle(self) -> float:
        return 1000.0 * self.cpu_used / self.cycles if self.cycles else math.nan


class Bench:
    """The options, the work directory and every process the benchmark starts (stopped by pid at the end);
    the host's load: a few busy processes and idle `sleep`s under IDLE_NAMES names, topped up to the
    target plus a margin (other jobs come and go), each ending by itself after `bound` seconds."""

    def __init__(self, options: argparse.Namespace, workdir: Path) -> None:
        self.options, self.workdir = options, workdir
        self.processes: List[Popen] = []
        self.bound = f"{(options.warmup + options.cycles) * options.interval + 180:.0f}"
        # comm is the name a process was exec'd under, so symlinks give the idle processes many names.
        (workdir / "bin").mkdir()
        self.idle_commands = [str(workdir / "bin" / f"idle-{index:02d}") for index in range(IDLE_NAMES)]
        for command in self.idle_commands:
            os.symlink(SLEEP_BIN, command)
        self.spawned = 0

    def start(self, args: Sequence[str], log: Optional[Path] = None, env: Optional[Dict[str, str]] = None) -> Popen:
        with log.open("ab") if log else open(os.devnull, "wb") as stderr:  # the child has its own copy
            self.processes.append(Popen(list(args), stdout=subprocess.DEVNULL, stderr=stderr, env=env))
        return self.processes[-1]

    def top_up(self) -> None:
        """Spawns the busy processes (once), then idle ones until the host is 50 above the target."""
        for index in range(self.spawned + 1, self.options.busy + 1):
            self.start([sys.executable, "-c", BUSY_CODE, f"bench-busy-{index}", f"{0.02 * index:.2f}", self.bound])
            self.spawned += 1
        for _ in range(3):  # re-count: other jobs may end while we spawn
            for _ in range(self.options.processes + 50 - process_count()):
                self.start([self.idle_commands[self.spawned % IDLE_NAMES], self.bound])
                self.spawned += 1

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()  # all at once: 300 sequential waits would take long
        for process in self.processes:
            stop_process(process, 5)

    def pusher(self, label: str, script: Path, name: str, tls: bool = False) -> Subject:
        """The pusher's own Pushgateway (its accepted PUTs are the pusher's cycles), then the pusher; with
        tls, the gateway has a throwaway CA and a bcrypt login."""
        directory = self.workdir / name
        directory.mkdir()
        gateway, agent_args = Pushgateway(directory), []
        if tls:
            password = secrets.token_urlsafe(24)
            (directory / "password").write_text(password + "\n")
            config, ca_file = web_config(directory, "agent-cost", TLS_USER, password)
            gateway = Pushgateway(directory, [f"--web.config.file={config}"], (TLS_USER, password), str(ca_file))
            agent_args = ["--ca-file", str(ca_file), "--username", TLS_USER, "--password-file", f"{directory}/password"]
        gateway.start()
        self.processes.append(gateway.process)
        pushes = lambda: accepted(gateway.endpoint, "pushgateway_http_requests_total", "push")  # noqa: E731
        return self.agent(label, script, directory, ["--pushgateway", gateway.url, *agent_args], pushes)

    def remote_writer(self) -> Subject:
        """The agent with --remote-write into its own Prometheus (no scrapes of its own)."""
        directory, send_interval = self.workdir / "rw", self.options.send_interval
        directory.mkdir()
        (directory / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
        receiver = Prometheus(directory, directory / "prometheus.yml", ["--web.enable-remote-write-receiver"])
        receiver.start()
        self.processes.append(receiver.process)
        # Each answered write holds send_interval / interval cycles (the first one, sent at once, in
        # the warm-up): CPU per cycle is counted per cycle sent, like a push.
        per_write, endpoint = round(send_interval / self.options.interval), Endpoint(receiver.url)
        writes = lambda: per_write * accepted(endpoint, "prometheus_http_requests_total", "/api/v1/write")  # noqa: E731
        sink = ["--remote-write", receiver.url + "/api/v1/write", "--remote-write-send-interval", f"{send_interval:g}"]
        return self.agent(f"agent remote write, sent every {send_interval:g} s", AGENT, directory, sink, writes)

    def agent(self, label: str, script: Path, directory: Path, sink: List[str], count: Callable[[], int]) -> Subject:
        # The agent reads its settings from the environment too: none may leak in from the caller.
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PUSH", "DEVICE_", "TOP_N"))}
        env.update(STATE_DIRECTORY=str(directory / "state"), LOG_LEVEL="WARNING")
        command = [self.options.python, str(script), *sink, "--device-serial", f"bench-{directory.name}",
                   "--interval", f"{self.options.interval:g}", "--job", JOB, "--top-n", "10"]  # fmt: skip
        log = directory / "pusher.log"
        return Subject(label, self.start(command, log, env), count, log)

    def node_exporter(self) -> Tuple[Subject, Callable[[], None]]:
        """node_exporter, and the scrape this script makes of it each cycle (its cycles are those scrapes)."""
        exporter, log, scrapes = Endpoint(f"http://127.0.0.1:{free_port()}"), self.workdir / "node_exporter.log", []
        argv = [NODE_EXPORTER_BIN, f"--web.listen-address={exporter.url.rsplit('/', 1)[1]}"]
        self.processes.append(start_daemon(argv, log, lambda: exporter.get("/metrics", 1.0), timeout=20))
        subject = Subject("node_exporter (scraped each cycle)", self.processes[-1], lambda: len(scrapes), log)
        return subject, lambda: scrapes.append(len(exporter.get("/metrics", 10)))


def warm_up(pushers: List[Subject], scrape: Callable[[], None], options: argparse.Namespace) -> None:
    """Imports, first /proc scans and first connections (TLS handshakes) stay out of the window; then each
    pusher's phase: the moment right after a push, seen as its server's count going up."""
    for _ in range(options.warmup):
        scrape()
        time.sleep(options.interval)
    for pusher in pushers:  # check_alive raises with the log's tail when a pusher died
        pushed = lambda p=pusher: p.check_alive() or p.count_cycles() >= options.warmup  # noqa: E731
        wait_until(pushed, options.warmup * options.interval + 30, message=f"pushes from {pusher.label}")
    counts = {pusher.label: pusher.count_cycles() for pusher in pushers}
    deadline = time.monotonic() + 3 * options.interval + 5
    while any(not pusher.pushed_at for pusher in pushers):
        if time.monotonic() > deadline:
            raise BenchError("a pusher stopped pushing during the warm-up")
        for pusher in pushers:
            if not pusher.pushed_at and pusher.count_cycles() > counts[pusher.label]:
                pusher.pushed_at = time.monotonic()
        time.sleep(0.02)


def run_window(
    options: argparse.Namespace, pushers: List[Subject], node_exporter: Subject, scrape: Callable[[], None]
) -> Tuple[List[int], float]:
    """options.cycles intervals for every subject: node_exporter scraped on this script's grid, each pusher
    snapshotted half an interval after its pushes, so that no snapshot splits a collection from its push.
    Returns the host's process counts and busy share during the window."""
    interval, counts = options.interval, []

    def tick() -> None:
        scrape()
        counts.append(process_count())

    start = time.monotonic() + interval
    events: List[Tuple[float, int, Callable[[], None]]] = [(start - interval / 2, 0, node_exporter.snapshot_start)]
    events += [(start + index * interval, 1, tick) for index in range(options.cycles)]
    events.append((start + (options.cycles - 0.5) * interval, 3, node_exporter.snapshot_end))
    for pusher in pushers:
        opens = pusher.pushed_at + interval / 2
        opens += math.ceil(max(0.0, start - interval / 2 - opens) / interval) * interval
        events += [(opens, 4, pusher.snapshot_start), (opens + options.cycles * interval, 5, pusher.snapshot_end)]
    busy_before, total_before = host_cpu_seconds()
    for when, _, action in sorted(events, key=lambda event: event[:2]):
        time.sleep(max(0.0, when - time.monotonic()))
        action()
    busy_after, total_after = host_cpu_seconds()
    return counts, (busy_after - busy_before) / (total_after - total_before)


def ratio(numerator: float, denominator: float) -> float:
    """nan when the denominator measured no CPU: /proc counts clock ticks (10 ms), and a short window
    of cheap cycles can stay under one."""
    return numerator / denominator if denominator > 0 else math.nan


def ratio_text(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{value:6.3f}"


def ratio_line(name: str, value: float, target: float) -> str:
    judged = (
        "NOT MEASURED (under one clock tick of CPU: more --cycles)" if math.isnan(value) else verdict(value <= target)
    )
    return f"  {name:<46} = {ratio_text(value)}   target <= {target:g}   {judged}"


def rss_line(subject: Subject, name: str) -> str:
    return (
        f"  {name + ' peak RSS':<46} = {subject.peak_rss / 1e6:5.1f} MB ({subject.peak_rss / 1048576:.1f} MiB)   "
        f"target <= {TARGET_PEAK_RSS_BYTES / 1e6:g} MB   {verdict(subject.peak_rss <= TARGET_PEAK_RSS_BYTES)}"
    )


def report(subjects: List[Subject], counts: List[int], busy_share: float, options: argparse.Namespace) -> List[str]:
    busy = round(100 * busy_share)  # the verdict follows the figure as printed
    too_busy = f": too busy to count (>= {MAX_HOST_BUSY_PERCENT} %)" if busy >= MAX_HOST_BUSY_PERCENT else ""
    lines = [
        f"window: {options.cycles} cycles at {options.interval:g} s; processes on the host {min(counts)}-{max(counts)}",
        f"host busy share: {busy}% of all CPU time of {os.cpu_count()} CPUs during the window (/proc/stat){too_busy}",
        "",
        f"{'subject':<42} {'cycles':>6} {'CPU ms/cycle':>12} {'CPU % of 1 core':>15} {'peak RSS MiB':>12}",
    ]
    for subject in subjects:
        share = 100 * subject.cpu_used / (options.cycles * options.interval)
        lines.append(
            f"{subject.label:<42} {subject.cycles:>6} {subject.cpu_ms_per_cycle:>12.2f} {share:>15.2f} "
            f"{subject.peak_rss / 1048576:>12.1f}"
        )
    agent, tls, rw, naive, node = (subject.cpu_ms_per_cycle for subject in subjects)
    return lines + [
        "",
        "ratios against the targets",
        ratio_line("agent CPU/cycle / node_exporter CPU/scrape", ratio(agent, node), TARGET_VS_NODE_EXPORTER),
        ratio_line("agent CPU/cycle / naive CPU/cycle", ratio(agent, naive), TARGET_VS_NAIVE),
        rss_line(subjects[0], "agent"),
        ratio_line("agent TLS CPU/cycle / node_exporter CPU/scrape", ratio(tls, node), TARGET_VS_NODE_EXPORTER),
        f"  {'agent TLS CPU/cycle / agent CPU/cycle':<46} = {ratio_text(ratio(tls, agent))}",
        rss_line(subjects[1], "agent TLS"),
        ratio_line("agent RW CPU/cycle / agent CPU/cycle", ratio(rw, agent), TARGET_RW_VS_AGENT),
        rss_line(subjects[2], "agent RW"),
    ]


def measure(options: argparse.Namespace) -> Iterator[str]:
    require_binaries(PUSHGATEWAY_BIN, PROMETHEUS_BIN, NODE_EXPORTER_BIN, SLEEP_BIN)
    yield f"agent_cost: {' '.join(sys.argv[1:]) or '(defaults)'}"
    yield f"machine: {machine(agents_python_version(options.python))} (the agents' interpreter: {options.python})"
    with tempfile.TemporaryDirectory(prefix="agent-cost-") as tmp:
        bench = Bench(options, Path(tmp))
        try:
            bench.top_up()
            pushers = [
                bench.pusher("agent (files/push_monitor.py)", AGENT, "agent"),
                bench.pusher("agent over TLS + basic auth (same script)", AGENT, "tls", tls=True),
                bench.remote_writer(),
                bench.pusher("naive (bench/naive_agent.py)", NAIVE_AGENT, "naive"),
            ]
            node_exporter, scrape = bench.node_exporter()
            print(f"agent_cost: {bench.spawned} processes spawned; warm-up, {options.cycles} cycles", file=sys.stderr)
            warm_up(pushers, scrape, options)
            bench.top_up()
            counts, busy_share = run_window(options, pushers, node_exporter, scrape)
            subjects = [*pushers, node_exporter]
            for subject in subjects:
                subject.check_alive()
                if subject.cycles < 1:
                    raise BenchError(f"{subject.label} completed no cycle in the window")
        finally:
            bench.stop_all()
    yield f"load: {bench.spawned} processes spawned, each ending by itself within {bench.bound} s"
    yield from report(subjects, counts, busy_share, options)


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_options(argv)
    return run_benchmark("agent_cost", lambda: measure(options))


if __name__ == "__main__":
    sys.exit(main())
