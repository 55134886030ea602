#!/usr/bin/env python3
"""What the push agent costs a device, side by side with two yardsticks, in one run.

Five subjects run at the same time over the same window at the same interval (default 1 s):

  agent          files/push_monitor.py, pushing to its own real Pushgateway
  agent TLS      the same script, pushing to its own Pushgateway served over TLS with basic auth
                 (--web.config.file: a throwaway CA and server certificate, a bcrypt-hashed login)
  agent RW       the same script with --remote-write, writing to its own Prometheus (receiver on;
                 the cycles are its answered writes, prometheus_http_requests_total)
  naive          bench/naive_agent.py (psutil.process_iter + Gauges + push_to_gateway), idem
  node_exporter  Debian's prometheus-node-exporter with default collectors, scraped by this script

The three targets are computed from the plain agent; the TLS agent is reported against it (CPU and RSS
ratios in the same window), against the same bounds, with each pusher's connection at both ends of the
window (one kept-alive connection) and each gateway's CPU per push.

For each: CPU seconds (utime + stime of /proc/<pid>/stat, all threads) between two snapshots,
divided by the pushes the gateway counted (or the scrapes made) in between, and peak RSS (VmHWM).
The host gets at least --processes processes first (idle `sleep`s under a few dozen names, plus a
few busy ones with their own names so the top-N ranking has real work); every process this script
starts is stopped at the end, and each carries its own deadline in case this script is killed.

Prints a table and the ratios against the targets, PASS or MISS each; exits 0 either way (the
targets are tracked here, never as timed test assertions). Exit 1 only if the benchmark cannot run.

    .venv/bin/python bench/agent_cost.py            # 30 cycles, >= 300 processes
    .venv/bin/python bench/agent_cost.py --quick    # smoke run: a few cycles, fewer processes
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "files" / "push_monitor.py"
NAIVE_AGENT = ROOT / "bench" / "naive_agent.py"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PUSHGATEWAY_BIN = "/usr/bin/prometheus-pushgateway"
PROMETHEUS_BIN = "/usr/bin/prometheus"
NODE_EXPORTER_BIN = "/usr/bin/prometheus-node-exporter"
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
JOB = "bench"
IDLE_NAMES = 25  # distinct app names among the idle processes, as on a real host

TARGET_VS_NODE_EXPORTER = 0.6
TARGET_VS_NAIVE = 0.5
TARGET_PEAK_RSS_BYTES = 30_000_000  # 30 MB, decimal: the stricter reading of the target
# Above this share of all CPU time busy, the subjects compete for the cores and the Go binary and the
# Python agents suffer unequally: the figures are printed but do not count.
MAX_HOST_BUSY_SHARE = 0.30

# A busy-ish process: a given share of one core in 100 ms slices, under its own name (PR_SET_NAME),
# until its deadline. The deadline keeps it bounded even if the benchmark itself is killed.
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


class BenchError(Exception):
    """The benchmark cannot run (missing binary, a subject died): one line, exit 1."""


@dataclass(frozen=True)
class Options:
    cycles: int
    warmup: int
    interval: float
    processes: int
    busy: int
    top_n: int
    python: str
    quick: bool


def parse_options(argv: Optional[Sequence[str]] = None) -> Options:
    parser = argparse.ArgumentParser(
        description="Agent CPU per cycle and peak RSS, side by side with a naive psutil agent and node_exporter."
    )
    parser.add_argument("--cycles", type=int, help="measured cycles (default 30; 4 with --quick)")
    parser.add_argument("--warmup", type=int, help="cycles before the window opens (default 3; 2 with --quick)")
    parser.add_argument("--interval", type=float, default=1.0, help="push and scrape interval in seconds (default 1)")
    parser.add_argument("--processes", type=int, help="processes the host must have (default 300; 150 with --quick)")
    parser.add_argument("--busy", type=int, help="busy-ish processes among them (default 4; 2 with --quick)")
    parser.add_argument("--top-n", type=int, default=10, help="top-N apps for both agents (default 10)")
    parser.add_argument(
        "--python",
        default=str(VENV_PYTHON if VENV_PYTHON.exists() else sys.executable),
        help="interpreter for both agents (default: the project's .venv python)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: few cycles, fewer processes")
    args = parser.parse_args(argv)
    quick = args.quick
    options = Options(
        cycles=args.cycles if args.cycles is not None else (4 if quick else 30),
        warmup=args.warmup if args.warmup is not None else (2 if quick else 3),
        interval=args.interval,
        processes=args.processes if args.processes is not None else (150 if quick else 300),
        busy=args.busy if args.busy is not None else (2 if quick else 4),
        top_n=args.top_n,
        python=args.python,
        quick=quick,
    )
    if options.cycles < 1 or options.warmup < 1 or options.busy < 0 or options.processes < 0 or options.top_n < 0:
        parser.error("--cycles and --warmup must be >= 1; --processes, --busy and --top-n >= 0")
    if not math.isfinite(options.interval) or not 0.1 <= options.interval <= 60:
        parser.error("--interval must be between 0.1 and 60 seconds")
    return options


# --------------------------------------------------------------------------------------------
# /proc readings
# --------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (the leader's stat sums its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        raw = handle.read()
    fields = raw[raw.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def peak_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


def process_count() -> int:
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit())


def host_cpu_ticks() -> Tuple[int, int]:
    """(busy, total) jiffies over all CPUs, to report how loaded the host was during the window."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(value) for value in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user/nice
    return total - idle, total


def machine_summary() -> List[str]:
    model = "?"
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="ascii") as handle:
        mem_kib = int(handle.readline().split()[1])
    debian = Path("/etc/debian_version").read_text().strip() if Path("/etc/debian_version").exists() else "?"
    return [
        f"machine: {os.cpu_count()} CPUs ({model}), {mem_kib / 1048576:.1f} GiB RAM, "
        f"Linux {platform.release()}, Debian {debian}",
    ]


# --------------------------------------------------------------------------------------------
# Processes this script owns
# --------------------------------------------------------------------------------------------


@dataclass
class Children:
    """Every process the benchmark starts, stopped (by its own pid) in reverse order at the end."""

    processes: List[subprocess.Popen] = field(default_factory=list)

    def start(
        self, args: Sequence[str], log: Optional[IO[bytes]] = None, env: Optional[Dict[str, str]] = None
    ) -> subprocess.Popen:
        process = subprocess.Popen(
            list(args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log or subprocess.DEVNULL, env=env
        )
        if log is not None:
            log.close()  # the child has its own copy
        self.processes.append(process)
        return process

    def stop_all(self, grace: float = 5.0) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace
        for process in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


class Load:
    """Idle `sleep`s under IDLE_NAMES names plus a few busy processes, topped up whenever the host
    drops below the target (other jobs on the host come and go). Each one ends by itself."""

    def __init__(self, children: Children, options: Options, bound_seconds: float, workdir: Path) -> None:
        self.children = children
        self.target = options.processes
        self.margin = 50 if options.processes else 0
        self.bound_seconds = bound_seconds
        self.idle = 0
        self.busy = 0
        sleep_bin = shutil.which("sleep")
        if sleep_bin is None:
            raise BenchError("no `sleep` binary on PATH")
        bindir = workdir / "bin"
        bindir.mkdir()
        # comm is the name a process was exec'd under, so symlinks give the idle processes many names.
        self.idle_commands = []
        for index in range(IDLE_NAMES):
            link = bindir / f"idle-{index:02d}"
            link.symlink_to(sleep_bin)
            self.idle_commands.append(str(link))

    def start_busy(self, count: int) -> None:
        for index in range(count):
            share = 0.02 * (index + 1)
            name = f"bench-busy-{index + 1}"
            self.children.start([sys.executable, "-c", BUSY_CODE, name, f"{share:.2f}", f"{self.bound_seconds:.0f}"])
            self.busy += 1

    def top_up(self) -> int:
        """Spawns idle processes until the host is at the target plus the margin; returns how many."""
        spawned = 0
        for _ in range(3):  # re-count: other jobs may end while we spawn
            missing = self.target + self.margin - process_count()
            if missing <= 0:
                break
            for _ in range(missing):
                self.children.start([self.idle_commands[self.idle % IDLE_NAMES], f"{self.bound_seconds:.0f}"])
                self.idle += 1
                spawned += 1
        return spawned

    def sample(self, counts: List[int]) -> None:
        """Records the host's process count, then tops up if it fell below the target."""
        count = process_count()
        counts.append(count)
        if count < self.target:
            self.top_up()


# --------------------------------------------------------------------------------------------
# TLS and basic auth for the third gateway
# --------------------------------------------------------------------------------------------

TLS_USER = "bench-device"
BCRYPT_COST = 10  # as in tests/test_agent_tls.py


@dataclass(frozen=True)
class TlsSetup:
    """A throwaway CA, a server certificate for 127.0.0.1 and one basic auth login, as files."""

    ca_file: Path
    web_config: Path
    username: str
    password_file: Path
    authorization: str

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_tls_setup(directory: Path) -> TlsSetup:
    """The exporter-toolkit web config the Pushgateway reads: tls_server_config and basic_auth_users."""
    # Imported here: only this subject needs them, and a missing package must be one clear line.
    try:
        import bcrypt

        from throwaway_pki import make_pki
    except ImportError as err:
        raise BenchError(f"the TLS subject needs cryptography and bcrypt ({err}): run with .venv/bin/python") from None
    directory.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = make_pki(directory, "agent-cost-bench")
    password = secrets.token_urlsafe(24)
    password_file = directory / "password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_COST)).decode()
    web_config = directory / "web.yml"
    web_config.write_text(
        f"tls_server_config:\n  cert_file: {cert_file}\n  key_file: {key_file}\n"
        f"basic_auth_users:\n  {TLS_USER}: '{hashed}'\n"
    )
    token = base64.b64encode(f"{TLS_USER}:{password}".encode()).decode()
    return TlsSetup(ca_file, web_config, TLS_USER, password_file, f"Basic {token}")


def established_ports(pid: int, remote_port: int) -> List[int]:
    """Local ports of pid's established TCP connections to remote_port: the same single port at both ends
    of the window means the pusher kept one connection alive across its pushes."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as handle:
            next(handle)  # header
            for line in handle:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if state == "01" and inode in inodes and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                    ports.append(int(local.rsplit(":", 1)[1], 16))
    return sorted(ports)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Endpoint:
    """A server this script reads: plain http, or https with its CA and a basic auth login."""

    url: str
    port: int
    authorization: Optional[str] = None
    context: Optional[ssl.SSLContext] = None

    def get(self, path: str, timeout: float = 5.0) -> bytes:
        headers = {"Authorization": self.authorization} if self.authorization else {}
        request = urllib.request.Request(self.url + path, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout, context=self.context) as response:
            return response.read()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise BenchError(f"timed out after {timeout:g} s waiting for {what}")


def answers(endpoint: Endpoint, path: str) -> bool:
    try:
        endpoint.get(path, 1.0)
    except OSError:  # also urllib's HTTPError and ssl's errors
        return False
    return True


def start_server(
    children: Children,
    binary: str,
    args: Sequence[str],
    ready_path: str,
    logfile: Path,
    *,
    tls: Optional[TlsSetup] = None,
) -> Endpoint:
    """Starts a Prometheus-style server on a free loopback port (https with basic auth when tls is given);
    returns its endpoint once it answers."""
    if not os.access(binary, os.X_OK):
        raise BenchError(f"{binary} not found: run `make host` (scripts/setup-host.sh) first")
    port = free_port()
    if tls is None:
        endpoint = Endpoint(f"http://127.0.0.1:{port}", port)
    else:
        args = [*args, f"--web.config.file={tls.web_config}"]
        endpoint = Endpoint(f"https://127.0.0.1:{port}", port, tls.authorization, tls.client_context())
    process = children.start([binary, f"--web.listen-address=127.0.0.1:{port}", *args], log=logfile.open("ab"))
    wait_until(lambda: process.poll() is None and answers(endpoint, ready_path), 20, f"{binary} on {endpoint.url}")
    return endpoint


def binary_version(binary: str) -> str:
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20, check=False)
    match = re.search(r"version (\S+)", result.stdout + result.stderr)
    return match.group(1) if match else "?"


def python_versions(python: str) -> str:
    code = (
        "import sys, importlib.metadata as m; "
        "print(sys.version.split()[0], m.version('psutil'), m.version('prometheus_client'))"
    )
    result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise BenchError(f"{python} cannot import psutil and prometheus_client: {result.stderr.strip()[-300:]}")
    version, psutil_version, client_version = result.stdout.split()
    return f"Python {version} ({python}), psutil {psutil_version}, prometheus_client {client_version}"


def clean_env(workdir: Path) -> Dict[str, str]:
    """The agent reads its settings from the environment too: none may leak in from the caller."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PUSH", "DEVICE_", "TOP_N"))}
    env.update({"STATE_DIRECTORY": str(workdir / "state"), "LOG_LEVEL": "WARNING"})
    return env


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


@dataclass
class Subject:
    label: str
    short: str
    process: subprocess.Popen
    count_cycles: Callable[[], int]
    series: Callable[[], int]
    logfile: Optional[Path] = None
    # A pusher's own gateway: its port (to see the pusher's connections) and its process (its CPU per push).
    gateway_port: Optional[int] = None
    gateway_process: Optional[subprocess.Popen] = None
    # Unix time of the pusher's last cycle as its server saw it (snapshots go mid-cycle).
    last_push: Optional[Callable[[], Optional[float]]] = None
    cpu_start: float = 0.0
    cycles_start: int = 0
    cpu_used: float = 0.0
    cycles: int = 0
    peak_rss: int = 0
    gateway_cpu_start: float = 0.0
    gateway_cpu_used: float = 0.0
    ports_start: List[int] = field(default_factory=list)
    ports_end: List[int] = field(default_factory=list)

    def snapshot_start(self) -> None:
        self.cycles_start = self.count_cycles()
        self.cpu_start = cpu_seconds(self.process.pid)
        if self.gateway_process is not None:
            self.gateway_cpu_start = cpu_seconds(self.gateway_process.pid)
        if self.gateway_port is not None:
            self.ports_start = established_ports(self.process.pid, self.gateway_port)

    def snapshot_end(self) -> None:
        self.cycles = self.count_cycles() - self.cycles_start
        self.cpu_used = cpu_seconds(self.process.pid) - self.cpu_start
        self.peak_rss = peak_rss_bytes(self.process.pid)
        if self.gateway_process is not None:
            self.gateway_cpu_used = cpu_seconds(self.gateway_process.pid) - self.gateway_cpu_start
        if self.gateway_port is not None:
            self.ports_end = established_ports(self.process.pid, self.gateway_port)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.logfile.read_text(errors="replace")[-1500:] if self.logfile and self.logfile.exists() else ""
            raise BenchError(f"{self.label} exited with status {self.process.returncode}: {tail.strip()}")

    @property
    def cpu_ms_per_cycle(self) -> float:
        return 1000.0 * self.cpu_used / self.cycles if self.cycles else math.nan

    @property
    def gateway_cpu_ms_per_push(self) -> float:
        return 1000.0 * self.gateway_cpu_used / self.cycles if self.cycles else math.nan

    def connection_note(self) -> str:
        """Whether the pusher kept one connection to its gateway through the window."""
        start, end = ",".join(map(str, self.ports_start)) or "none", ",".join(map(str, self.ports_end)) or "none"
        kept = len(self.ports_start) == 1 and self.ports_start == self.ports_end
        return f"{self.short}: local port {start} at the window's start, {end} at its end " + (
            "(one connection kept alive)" if kept else "(NOT one kept-alive connection)"
        )


def gateway_pushes(gateway: Endpoint) -> int:
    """Successful PUTs the gateway has accepted: each pusher has a gateway of its own."""
    text = gateway.get("/metrics").decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("pushgateway_http_requests_total{") and 'handler="push"' in line and 'code="2' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def gateway_series(gateway: Endpoint) -> int:
    """Series the pusher sent in its last push (the gateway's own push_time series excluded)."""
    text = gateway.get("/metrics").decode()
    return sum(
        1
        for line in text.splitlines()
        if f'job="{JOB}"' in line and not line.startswith(("#", "push_time_seconds", "push_failure_time_seconds"))
    )


def last_push_time(gateway: Endpoint) -> Optional[float]:
    for line in gateway.get("/metrics").decode().splitlines():
        if line.startswith("push_time_seconds{") and f'job="{JOB}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def receiver_writes(receiver: Endpoint) -> int:
    """Remote-write requests the Prometheus receiver answered with a 2xx (each pusher has its own)."""
    total = 0
    for line in receiver.get("/metrics").decode().splitlines():
        write = line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/write"' in line
        if write and 'code="2' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def receiver_query(receiver: Endpoint, expr: str) -> List[Dict]:
    body = receiver.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    return json.loads(body)["data"]["result"]


def receiver_last_push(receiver: Endpoint) -> Optional[float]:
    result = receiver_query(receiver, "max(push_monitor_collection_timestamp_seconds)")
    return float(result[0]["value"][1]) if result else None


def receiver_series(receiver: Endpoint) -> int:
    result = receiver_query(receiver, f'count({{job="{JOB}"}})')
    return int(float(result[0]["value"][1])) if result else 0


def mid_cycle(subject: Subject, interval: float, not_before: float) -> float:
    """The first monotonic time >= not_before half an interval after one of the pusher's pushes:
    snapshots there never split a collection from its push."""
    pushed = subject.last_push() if subject.last_push else None
    if pushed is None:
        raise BenchError(f"no push recorded for {subject.label}")
    pushed_monotonic = pushed - time.time() + time.monotonic()
    anchor = pushed_monotonic + interval / 2
    return anchor + math.ceil(max(0.0, not_before - anchor) / interval) * interval


@dataclass
class Scraper:
    endpoint: Endpoint
    scrapes: int = 0
    last_series: int = 0

    def scrape(self) -> None:
        body = self.endpoint.get("/metrics", timeout=10).decode("utf-8", "replace")
        self.scrapes += 1
        self.last_series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))


@dataclass
class Window:
    seconds: float = 0.0
    process_counts: List[int] = field(default_factory=list)
    host_busy_share: float = 0.0
    load_before: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: Tuple[float, float, float] = (0.0, 0.0, 0.0)


def run_window(
    pushers: List[Tuple[Subject, Endpoint]], node_exporter: Subject, scraper: Scraper, load: Load, options: Options
) -> Window:
    """One window of options.cycles intervals. node_exporter is scraped on this script's grid; each
    pusher is snapshotted mid-cycle on its own grid, the same number of intervals apart."""
    interval = options.interval
    window = Window(load_before=os.getloadavg())
    start = time.monotonic() + interval
    events: List[Tuple[float, int, Callable[[], None]]] = [(start - interval / 2, 0, node_exporter.snapshot_start)]
    for index in range(options.cycles):
        events.append((start + index * interval, 1, scraper.scrape))
        events.append((start + index * interval, 2, lambda: load.sample(window.process_counts)))
    events.append((start + (options.cycles - 0.5) * interval, 3, node_exporter.snapshot_end))
    for subject, _ in pushers:
        opens = mid_cycle(subject, interval, start - interval / 2)
        events.append((opens, 4, subject.snapshot_start))
        events.append((opens + options.cycles * interval, 5, subject.snapshot_end))
    events.sort(key=lambda event: (event[0], event[1]))
    busy_before, total_before = host_cpu_ticks()
    opened = time.monotonic()
    for when, _, action in events:
        time.sleep(max(0.0, when - time.monotonic()))
        action()
    busy_after, total_after = host_cpu_ticks()
    window.seconds = time.monotonic() - opened
    window.host_busy_share = (busy_after - busy_before) / max(1, total_after - total_before)
    window.load_after = os.getloadavg()
    return window


def warm_up(pushers: List[Tuple[Subject, Endpoint]], scraper: Scraper, options: Options) -> None:
    """Imports, first /proc scans and first connections (TLS handshake included) stay out of the window."""
    for _ in range(options.warmup):
        scraper.scrape()
        time.sleep(options.interval)
    for subject, _ in pushers:
        subject.check_alive()
        wait_until(
            lambda subject=subject: subject.count_cycles() >= options.warmup,
            options.warmup * options.interval + 30,
            f"{options.warmup} pushes from {subject.label}",
        )


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


TLS_LABEL = "agent over TLS + basic auth (same script)"


def report(subjects: List[Subject], window: Window, options: Options, header: List[str]) -> List[str]:
    agent, agent_tls, agent_rw, naive, node_exporter = subjects
    lines = [*header]
    counts = window.process_counts
    lines.append(
        f"window: {options.cycles} cycles at {options.interval:g} s for each subject "
        f"({window.seconds:.1f} s from the first snapshot to the last); "
        f"processes on the host during the window: {min(counts)}-{max(counts)}"
    )
    lines.append(
        f"host busy share: {100 * window.host_busy_share:.0f}% of all CPU time of {os.cpu_count()} CPUs during the "
        "window (/proc/stat, non-idle over total; everything counts: the subjects, this script's load, other jobs); "
        f"load average {window.load_before[0]:.2f} before, {window.load_after[0]:.2f} after"
    )
    if round(100 * window.host_busy_share) >= 100 * MAX_HOST_BUSY_SHARE:  # as printed
        lines.append(
            f"HOST TOO BUSY: {100 * window.host_busy_share:.0f}% >= {100 * MAX_HOST_BUSY_SHARE:.0f}%, "
            "so these figures do not count; run again on a quieter host"
        )
    lines.append("")
    lines.append(f"{'subject':<42} {'cycles':>6} {'CPU ms/cycle':>12} {'CPU % of 1 core':>15} {'peak RSS MiB':>12}")
    for subject in subjects:
        cpu_share = 100 * subject.cpu_used / (options.cycles * options.interval)
        lines.append(
            f"{subject.label:<42} {subject.cycles:>6} {subject.cpu_ms_per_cycle:>12.2f} "
            f"{cpu_share:>15.2f} {subject.peak_rss / 1048576:>12.1f}"
        )
    lines.append("")
    vs_node_exporter = agent.cpu_ms_per_cycle / node_exporter.cpu_ms_per_cycle
    vs_naive = agent.cpu_ms_per_cycle / naive.cpu_ms_per_cycle
    lines.append("ratios against the targets")
    lines.append(
        f"  agent CPU/cycle / node_exporter CPU/scrape = {vs_node_exporter:.2f}   target <= "
        f"{TARGET_VS_NODE_EXPORTER:g}     {verdict(vs_node_exporter <= TARGET_VS_NODE_EXPORTER)}"
    )
    lines.append(
        f"  agent CPU/cycle / naive CPU/cycle          = {vs_naive:.2f}   target <= "
        f"{TARGET_VS_NAIVE:g}   {verdict(vs_naive <= TARGET_VS_NAIVE)}"
    )
    lines.append(
        f"  agent peak RSS = {agent.peak_rss / 1e6:.1f} MB ({agent.peak_rss / 1048576:.1f} MiB)     target <= "
        f"{TARGET_PEAK_RSS_BYTES / 1e6:g} MB   {verdict(agent.peak_rss <= TARGET_PEAK_RSS_BYTES)}"
    )
    return lines + [""] + tls_cost(agent, agent_tls, node_exporter) + [""] + remote_write_cost(agent, agent_rw)


def remote_write_cost(agent: Subject, agent_rw: Subject) -> List[str]:
    """The same agent with --remote-write (protobuf + snappy, timestamps) against the Pushgateway text."""
    ratio = agent_rw.cpu_ms_per_cycle / agent.cpu_ms_per_cycle
    return [
        "cost of remote write (same agent, same window)",
        f"  agent RW CPU/cycle / agent CPU/cycle       = {ratio:.2f}   target <= 1     {verdict(ratio <= 1)}",
        f"  agent RW peak RSS = {agent_rw.peak_rss / 1e6:.1f} MB (agent {agent.peak_rss / 1e6:.1f} MB)",
    ]


def tls_cost(agent: Subject, agent_tls: Subject, node_exporter: Subject) -> List[str]:
    """The same agent over https with basic auth against plain http, measured in the same window."""
    cpu_ratio = agent_tls.cpu_ms_per_cycle / agent.cpu_ms_per_cycle
    rss_ratio = agent_tls.peak_rss / agent.peak_rss
    vs_node_exporter = agent_tls.cpu_ms_per_cycle / node_exporter.cpu_ms_per_cycle
    return [
        "cost of TLS + basic auth (same agent, same window)",
        f"  agent TLS CPU/cycle / agent CPU/cycle      = {cpu_ratio:.2f}   "
        f"({round(agent_tls.cpu_ms_per_cycle - agent.cpu_ms_per_cycle, 2) + 0.0:+.2f} ms/cycle)",  # no "-0.00"
        f"  agent TLS peak RSS / agent peak RSS        = {rss_ratio:.2f}   "
        f"({(agent_tls.peak_rss - agent.peak_rss) / 1e6:+.1f} MB)",
        f"  agent TLS CPU/cycle / node_exporter CPU/scrape = {vs_node_exporter:.2f}   target <= "
        f"{TARGET_VS_NODE_EXPORTER:g}     {verdict(vs_node_exporter <= TARGET_VS_NODE_EXPORTER)}",
        f"  agent TLS peak RSS = {agent_tls.peak_rss / 1e6:.1f} MB ({agent_tls.peak_rss / 1048576:.1f} MiB)     "
        f"target <= {TARGET_PEAK_RSS_BYTES / 1e6:g} MB   {verdict(agent_tls.peak_rss <= TARGET_PEAK_RSS_BYTES)}",
        f"  connections: {agent.connection_note()}; {agent_tls.connection_note()}",
        f"  gateway CPU per push (the server's side): plain {agent.gateway_cpu_ms_per_push:.2f} ms, "
        f"TLS + basic auth (bcrypt cost {BCRYPT_COST}) {agent_tls.gateway_cpu_ms_per_push:.2f} ms",
    ]


def series_line(subjects: List[Subject]) -> str:
    parts = [f"{subject.short} {subject.series()}" for subject in subjects]
    return "series per cycle: " + ", ".join(parts)


@dataclass(frozen=True)
class Pusher:
    """One pushing subject: its label, script, serial and extra arguments, and its gateway's TLS (if any)."""

    label: str
    short: str
    script: Path
    serial: str
    tls: Optional[TlsSetup] = None

    def arguments(self) -> List[str]:
        if self.tls is None:
            return []
        return [
            "--ca-file", str(self.tls.ca_file), "--username", self.tls.username,
            "--password-file", str(self.tls.password_file),
        ]  # fmt: skip


def start_pusher(pusher: Pusher, children: Children, options: Options, workdir: Path) -> Tuple[Subject, Endpoint]:
    """The pusher's own Pushgateway (its accepted PUTs are the pusher's cycles), then the pusher."""
    directory = workdir / pusher.serial
    directory.mkdir()
    gateway = start_server(
        children,
        PUSHGATEWAY_BIN,
        [f"--persistence.file={directory / 'pushgateway.db'}"],
        "/-/ready",
        directory / "pushgateway.log",
        tls=pusher.tls,
    )
    gateway_process = children.processes[-1]
    logfile = directory / "pusher.log"
    command = [
        options.python, str(pusher.script), "--pushgateway", gateway.url, "--device-serial", pusher.serial,
        "--interval", f"{options.interval:g}", "--job", JOB, "--top-n", str(options.top_n), *pusher.arguments(),
    ]  # fmt: skip
    process = children.start(command, log=logfile.open("ab"), env=clean_env(workdir))
    subject = Subject(
        pusher.label,
        pusher.short,
        process,
        lambda: gateway_pushes(gateway),
        lambda: gateway_series(gateway),
        logfile,
        gateway_port=gateway.port,
        gateway_process=gateway_process,
        last_push=lambda: last_push_time(gateway),
    )
    return subject, gateway


def start_remote_writer(children: Children, options: Options, workdir: Path) -> Tuple[Subject, Endpoint]:
    """The agent with --remote-write and its own Prometheus receiver (no scrapes of its own)."""
    directory = workdir / "bench-agent-rw"
    directory.mkdir()
    config = directory / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
    flags = [
        f"--config.file={config}",
        f"--storage.tsdb.path={directory / 'tsdb'}",
        "--web.enable-remote-write-receiver",
    ]
    receiver = start_server(children, PROMETHEUS_BIN, flags, "/-/ready", directory / "prometheus.log")
    receiver_process = children.processes[-1]
    logfile = directory / "pusher.log"
    command = [
        options.python, str(AGENT), "--remote-write", receiver.url + "/api/v1/write", "--device-serial",
        "bench-agent-rw", "--interval", f"{options.interval:g}", "--job", JOB, "--top-n", str(options.top_n),
        "--state-dir", str(directory / "state"),
    ]  # fmt: skip
    process = children.start(command, log=logfile.open("ab"), env=clean_env(workdir))
    subject = Subject(
        "agent remote write (same script)",
        "agent-rw",
        process,
        lambda: receiver_writes(receiver),
        lambda: receiver_series(receiver),
        logfile,
        gateway_port=receiver.port,
        gateway_process=receiver_process,
        last_push=lambda: receiver_last_push(receiver),
    )
    return subject, receiver


def run(options: Options, children: Children, workdir: Path) -> List[str]:
    header = [
        f"agent_cost: {' '.join(sys.argv[1:]) or '(defaults)'}",
        *machine_summary(),
        f"agents run by: {python_versions(options.python)}, {ssl.OPENSSL_VERSION} (this script's)",
        f"node_exporter {binary_version(NODE_EXPORTER_BIN)}, pushgateway {binary_version(PUSHGATEWAY_BIN)}",
    ]
    bound = options.warmup * options.interval + options.cycles * options.interval + 180
    load = Load(children, options, bound, workdir)
    load.start_busy(options.busy)
    load.top_up()
    spawned_before = load.idle
    tls = make_tls_setup(workdir / "tls")
    pushers = [
        start_pusher(pusher, children, options, workdir)
        for pusher in (
            Pusher("agent (files/push_monitor.py)", "agent", AGENT, "bench-agent"),
            Pusher(TLS_LABEL, "agent-tls", AGENT, "bench-agent-tls", tls),
        )
    ]
    pushers.append(start_remote_writer(children, options, workdir))
    pushers.append(start_pusher(Pusher("naive (bench/naive_agent.py)", "naive", NAIVE_AGENT, "bench-naive"),
                                children, options, workdir))  # fmt: skip
    node_exporter_endpoint = start_server(children, NODE_EXPORTER_BIN, [], "/metrics", workdir / "node_exporter.log")
    node_exporter_process = children.processes[-1]
    scraper = Scraper(node_exporter_endpoint)
    node_exporter = Subject(
        "node_exporter (scraped each cycle)",
        "node_exporter",
        node_exporter_process,
        lambda: scraper.scrapes,
        lambda: scraper.last_series,
        workdir / "node_exporter.log",
    )
    spawned = load.idle + load.busy
    print(f"agent_cost: {spawned} processes spawned; warm-up, then {options.cycles} cycles", file=sys.stderr)
    warm_up(pushers, scraper, options)
    load.top_up()
    spawned_before_window = load.idle
    window = run_window(pushers, node_exporter, scraper, load, options)
    header.append(
        f"load: spawned {load.busy} busy and {load.idle} idle processes ({spawned_before} at start, "
        f"{spawned_before_window - spawned_before} before the window, {load.idle - spawned_before_window} during it "
        f"to stay >= {options.processes}); each ends by itself within {bound:.0f} s"
    )
    subjects = [subject for subject, _ in pushers] + [node_exporter]
    for subject in subjects:
        subject.check_alive()
        if subject.cycles < 1:
            raise BenchError(f"{subject.label} completed no cycle in the window")
    return [*report(subjects, window, options, header), series_line(subjects)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    options = parse_options(argv)
    # SIGTERM must still run the clean-up below.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="agent-cost-") as tmp:
            try:
                lines = run(options, children, Path(tmp))
            finally:
                children.stop_all()
    except BenchError as err:
        print(f"agent_cost: error: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
