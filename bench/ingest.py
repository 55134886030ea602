#!/usr/bin/env python3
"""How many devices one server ingests at a 1 s interval: the stock Pushgateway, the roles' server and
the agent's remote write into the roles' Prometheus, side by side in one run.

Subjects run one after the other (never sharing the CPU), each on its own free loopback port:

  stock  Debian's /usr/bin/prometheus-pushgateway with its stock flags (only its own persistence file)
  role   the Pushgateway with the flags roles/pushgateway renders (testkit/server.py renders them
         through playbooks/render-server-config.yml with the roles' defaults)

  remote_write  no gateway: the devices POST remote-write requests (the agent's encoding of the same
         samples, each push stamped with the current time, snappy-compressed per push) to the role's
         Prometheus with prometheus_remote_write_receiver on

The gateways are scraped by /usr/bin/prometheus with the configuration roles/prometheus renders (the
pushgateway job: honor_labels, 1 s interval and timeout; the rules; the role's Prometheus flags).

The load: N simulated devices, each pushing the agent's real exposition (files/push_monitor.py --print
--top-n 10, with each device's own serial and host name) with PUT to its own group, once a second on a
fixed grid with its own phase, over its own kept-alive connection, from --workers processes. For each
step of the ramp the new devices' groups are pushed once first, then the load runs for --duration s.
A step passes with zero failed pushes, push p99 < 250 ms, Prometheus' scrape_duration_seconds of the
gateway < 1 s and up == 1 throughout (remote write instead: at least 95 % of the pushed samples counted in
prometheus_tsdb_head_samples_appended_total), and at least 95 % of the offered pushes made (else the
generator, not the server, was the limit). A subject stops ramping after its first failing step.

Prints one row per step, then for each subject the largest passing N and its ratio to the first
subject, against the targets (role >= 2000 devices and >= 20x stock, remote_write >= 3x role), PASS or
MISS, and the wire bytes per sample of each transport; exits 0 either way.
Exit 1 if the benchmark cannot run, 2 on bad input.

    .venv/bin/python bench/ingest.py                          # stock and role, the default ramp
    .venv/bin/python bench/ingest.py --quick                  # smoke run: tiny N, a few seconds a step
    .venv/bin/python bench/ingest.py --subjects role,remote_write --ramp 500,1000,2000,3000
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import re
import signal
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # testkit: the roles' server config rendered, a real Prometheus
sys.path.insert(0, str(ROOT / "files"))  # push_monitor: the agent's own path and label encoding

from ingest_load import TIMESTAMP_PLACEHOLDER, Device, StepCommand, StepResult, build_request, worker_main  # noqa: E402

from push_monitor import DEFAULT_JOB, Family, WriteRequestEncoder, grouping_path, label_safe  # noqa: E402
from testkit.process import free_port, stop_process, wait_until  # noqa: E402
from testkit.server import Prometheus, read_flags, render_server_config  # noqa: E402
from testkit.web import http_get  # noqa: E402

AGENT = ROOT / "files" / "push_monitor.py"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PUSHGATEWAY_BIN = "/usr/bin/prometheus-pushgateway"
PROMETHEUS_BIN = "/usr/bin/prometheus"
TICKS = os.sysconf("SC_CLK_TCK")
PLACEHOLDER_SERIAL = "BENCHSERIALPLACEHOLDER"
DEFAULT_RAMP = "25,50,100,250,500,1000,1500,2000,2500,3000,3500,4000"
QUICK_RAMP = "5,10"
HOST_PLUMBING = re.compile(r'interface="(veth|podman|cni|br-|docker)')
QUIET_SECONDS = 4.0
P99_LIMIT = 0.25
SCRAPE_LIMIT = 1.0
ACHIEVED_MIN = 0.95
TARGET_DEVICES = 2000
TARGET_RATIO = 20.0
TARGET_REMOTE_WRITE_RATIO = 3.0
STORED_MIN = 0.95
SUBJECTS = {
    "stock": "Debian's Pushgateway, stock flags",
    "role": "the flags roles/pushgateway renders",
    "remote_write": "the agent's remote write to the role's Prometheus, receiver on",
}
PLACEHOLDER_MS = sum((byte & 0x7F) << (7 * i) for i, byte in enumerate(TIMESTAMP_PLACEHOLDER))
SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} (\S+)$")
LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class BenchError(Exception):
    """The benchmark cannot run (a binary missing, a server died): one line, exit 1."""


def parse_ramp(raw: str) -> List[int]:
    try:
        steps = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ramp {raw!r}: expected comma-separated device counts") from None
    if not steps or any(n < 1 for n in steps) or steps != sorted(set(steps)):
        raise argparse.ArgumentTypeError(f"--ramp {raw!r}: expected increasing positive device counts")
    return steps


def parse_subjects(raw: str) -> List[str]:
    chosen = [part.strip() for part in raw.split(",") if part.strip()]
    unknown = [name for name in chosen if name not in SUBJECTS]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"--subjects {raw!r}: choose from {', '.join(SUBJECTS)}")
    return [name for name in SUBJECTS if name in chosen]


def positive(kind: type):
    def parse(raw: str):
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{raw!r} must be > 0")
        return value

    return parse


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/ingest.py",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--quick", action="store_true", help=f"smoke run: ramp {QUICK_RAMP}, 3 s steps")
    parser.add_argument(
        "--subjects",
        type=parse_subjects,
        default=list(SUBJECTS),
        help=f"comma-separated [default {','.join(SUBJECTS)}]",
    )
    parser.add_argument("--ramp", type=parse_ramp, help=f"device counts, increasing [default {DEFAULT_RAMP}]")
    parser.add_argument("--duration", type=positive(float), help="seconds of load per step [default 15]")
    parser.add_argument("--interval", type=positive(float), default=1.0, help="push interval [default 1]")
    parser.add_argument(
        "--timeout", type=positive(float), help="push timeout [default the agent's: min(0.8 x interval, 10)]"
    )
    parser.add_argument("--workers", type=positive(int), default=2, help="load generator processes [default 2]")
    parser.add_argument(
        "--max-minutes", type=positive(float), default=20.0, help="stop ramping after this long [default 20]"
    )
    args = parser.parse_args(argv)
    args.ramp = args.ramp or parse_ramp(QUICK_RAMP if args.quick else DEFAULT_RAMP)
    args.duration = args.duration or (3.0 if args.quick else 15.0)
    args.timeout = args.timeout or min(0.8 * args.interval, 10.0)
    return args


# ---------------------------------------------------------------------------------------------
# The payload: the agent's own exposition, one per device
# ---------------------------------------------------------------------------------------------


def agent_exposition() -> str:
    """What files/push_monitor.py would push (top-N 10), with a placeholder serial to substitute."""
    python = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
    result = subprocess.run(
        [python, str(AGENT), "--print", "--top-n", "10", "--device-serial", PLACEHOLDER_SERIAL],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PUSH", "DEVICE_", "TOP_N"))},
    )
    if result.returncode != 0 or PLACEHOLDER_SERIAL not in result.stdout:
        raise BenchError(f"the agent's --print failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    # The containers other jobs run here come and go with their veth interfaces: a device has none,
    # and keeping them would make the payload (and every figure) depend on the moment of the run.
    return "".join(line for line in result.stdout.splitlines(keepends=True) if not HOST_PLUMBING.search(line))


def realistic_serial(rng: random.Random, index: int) -> str:
    """Serials in the shapes real fleets report: service tags, laptop and SoC serials, and now and then
    one with a space or a slash (sent base64-encoded in the path, as the agent does)."""
    upper = string.ascii_uppercase + string.digits
    style = index % 5
    if index % 97 == 13:
        return f"SN {rng.randint(1000, 9999)}/{rng.choice('ABCDEF')}{index}"
    if style == 0:
        return "".join(rng.choices(upper, k=7))  # Dell service tag
    if style == 1:
        return "PF" + "".join(rng.choices(upper, k=6))  # Lenovo
    if style == 2:
        return "C02" + "".join(rng.choices(upper, k=9))  # Apple
    if style == 3:
        return "10000000" + "".join(rng.choices("0123456789abcdef", k=8))  # Raspberry Pi
    return "5CG" + "".join(rng.choices(upper, k=7))  # HP


def exposition_families(exposition: str) -> List[Family]:
    """The exposition's samples as the agent's families, without the device's own labels."""
    families = []
    for line in exposition.splitlines():
        match = SAMPLE_LINE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        pairs = tuple(
            (label, re.sub(r"\\[\\\"n]", lambda m: UNESCAPE[m.group(0)], text))
            for label, text in LABEL_PAIR.findall(labels)
            if label not in ("device_serial", "hostname")
        )
        families.append(Family(name, "", "", [(pairs, float(value))]))
    return families


def write_request(families: List[Family], serial: str, host: str) -> bytes:
    """The agent's WriteRequest of these samples for one device, TIMESTAMP_PLACEHOLDER as every timestamp."""
    encoder = WriteRequestEncoder(DEFAULT_JOB, (("device_serial", label_safe(serial)), ("hostname", host)))
    payload, _ = encoder.encode(families, PLACEHOLDER_MS)
    return payload


def build_devices(count: int, exposition: str, remote_write: bool) -> List[Device]:
    rng = random.Random(20261125)
    hostname = re.search(r'hostname="([^"]*)"', exposition)
    if hostname is None:
        raise BenchError("the agent's exposition has no hostname label")
    seen: set = set()
    devices = []
    families = exposition_families(exposition)
    for index in range(count):
        serial = realistic_serial(rng, index)
        while serial in seen:
            serial = realistic_serial(rng, index)
        seen.add(serial)
        host = f"{rng.choice(['pos', 'kiosk', 'edge', 'lab'])}-{rng.randint(1, 400):03d}-{index:05d}"
        text = exposition.replace(f'hostname="{hostname.group(1)}"', f'hostname="{host}"')
        text = text.replace(PLACEHOLDER_SERIAL, label_safe(serial))
        request = write_request(families, serial, host) if remote_write else b""
        devices.append(Device(grouping_path(DEFAULT_JOB, serial), text.encode(), rng.random(), request))
    return devices


def series_per_device(exposition: str) -> int:
    return sum(1 for line in exposition.splitlines() if line and not line.startswith("#"))


# ---------------------------------------------------------------------------------------------
# /proc readings
# ---------------------------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """utime + stime of a process (all threads) in seconds; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_cpu() -> Tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, over all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / TICKS, total / TICKS


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------------------------------------
# The servers
# ---------------------------------------------------------------------------------------------


@dataclass
class Server:
    gateway: Optional[subprocess.Popen]  # None for remote write: the devices write to Prometheus
    gateway_port: int  # where the devices send: the gateway, or Prometheus' receiver
    prometheus: Prometheus
    gateway_flags: List[str]
    prometheus_flags: List[str]


def gateway_flags(subject: str, rendered: Path, port: int, workdir: Path) -> List[str]:
    """The subject's flags; the listen address and persistence file are always this run's own (Debian's
    default persistence file is shared by every gateway on the machine)."""
    own = [f"--web.listen-address=127.0.0.1:{port}", f"--persistence.file={workdir / 'pushgateway.data'}"]
    owned = ("--web.listen-address", "--persistence.file", "--web.config.file")  # plain HTTP on loopback
    flags = [] if subject == "stock" else read_flags(rendered / "flags" / "pushgateway.env")
    return own + [f for f in flags if f.split("=", 1)[0] not in owned]


def render(workdir: Path, gateway_port: int, prometheus_port: int, receiver: bool = False) -> Path:
    dest = workdir / "rendered"
    extra = {
        "prometheus_rules_dir": str(dest / "prometheus" / "rules"),
        "prometheus_pushgateway_targets": [f"127.0.0.1:{gateway_port}"],
        "prometheus_self_target": f"127.0.0.1:{prometheus_port}",
        "prometheus_remote_write_receiver": receiver,
    }
    try:
        return render_server_config(dest, extra)
    except AssertionError as err:
        raise BenchError(str(err)) from None


def start_gateway(flags: List[str], port: int, workdir: Path) -> subprocess.Popen:
    log = workdir / "pushgateway.log"
    process = subprocess.Popen([PUSHGATEWAY_BIN, *flags], stdout=subprocess.DEVNULL, stderr=log.open("ab"))

    def ready() -> bool:
        if process.poll() is not None:
            raise BenchError(f"the pushgateway exited with {process.returncode}: {log.read_text()[-1000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    wait_until(ready, 20, 0.1, message=f"pushgateway on port {port}")
    return process


def start_prometheus(workdir: Path, rendered: Path, port: int) -> Prometheus:
    prometheus = Prometheus(
        workdir, rendered / "prometheus" / "prometheus.yml", read_flags(rendered / "flags" / "prometheus.env"), port
    )
    # Plain HTTP on loopback: the web config (TLS, logins) the roles install is not rendered here.
    prometheus.args = [a for a in prometheus.args if not a.startswith("--web.config.file=")]
    try:
        prometheus.start()
    except AssertionError as err:
        raise BenchError(str(err)) from None
    return prometheus


def start_server(subject: str, workdir: Path) -> Server:
    gateway_port, prometheus_port = free_port(), free_port()
    if subject == "remote_write":
        # The role's Prometheus unchanged but for the receiver; its pushgateway job finds nothing to scrape.
        rendered = render(workdir, gateway_port, prometheus_port, receiver=True)
        prometheus = start_prometheus(workdir, rendered, prometheus_port)
        return Server(None, prometheus_port, prometheus, [], prometheus.args)
    rendered = render(workdir, gateway_port, prometheus_port)
    flags = gateway_flags(subject, rendered, gateway_port, workdir)
    gateway = start_gateway(flags, gateway_port, workdir)
    try:
        prometheus = start_prometheus(workdir, rendered, prometheus_port)
    except BaseException:
        stop_process(gateway)
        raise
    return Server(gateway, gateway_port, prometheus, flags, prometheus.args)


def stop_server(server: Server) -> None:
    server.prometheus.stop()
    if server.gateway is not None:
        stop_process(server.gateway)


def samples_appended(server: Server) -> Optional[float]:
    """Prometheus' prometheus_tsdb_head_samples_appended_total (all sample types), from its /metrics;
    None when Prometheus does not answer within 30 s (the step then fails)."""
    try:
        text = http_get(f"{server.prometheus.url}/metrics", 30).decode()
    except OSError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("prometheus_tsdb_head_samples_appended_total")
    )


def prometheus_value(server: Server, expr: str, at: float) -> Optional[float]:
    try:
        result = server.prometheus.api("query", query=expr, time=f"{at:.3f}")["result"]
    except (AssertionError, OSError, ValueError):
        return None
    return float(result[0]["value"][1]) if result else None


# ---------------------------------------------------------------------------------------------
# The load generator's processes
# ---------------------------------------------------------------------------------------------


class Generator:
    """--workers processes, each owning every workers-th device, driven step by step over pipes."""

    def __init__(self, count: int, devices: List[Device]) -> None:
        context = multiprocessing.get_context("fork")
        self.pipes = []
        self.processes = []
        for number in range(count):
            parent, child = context.Pipe()
            process = context.Process(target=worker_main, args=(number, count, devices, child), daemon=True)
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)

    def pids(self) -> List[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def run(self, cmd: StepCommand, timeout: float) -> StepResult:
        for pipe in self.pipes:
            pipe.send(cmd)
        merged = StepResult()
        deadline = time.monotonic() + timeout
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise BenchError(f"a load generator worker did not finish within {timeout:.0f} s")
            answer = pipe.recv()
            if isinstance(answer, Exception):
                raise BenchError(f"a load generator worker failed: {answer!r}")
            merged.latencies += answer.latencies
            merged.lags += answer.lags
            merged.failures += answer.failures
            merged.pushes += answer.pushes
        return merged

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(None)
            except OSError:
                pass
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)


# ---------------------------------------------------------------------------------------------
# One step
# ---------------------------------------------------------------------------------------------


@dataclass
class Step:
    devices: int
    offered: float
    achieved: float
    failed: int
    failures: Dict[str, int]
    p50_ms: float
    p99_ms: float
    lag_p99_ms: float
    scrape_max_s: Optional[float]
    up_min: Optional[float]
    samples: Optional[float]
    prepopulate_failed: int
    cpu: Dict[str, float]  # percent of the whole machine (all cores)
    load: str
    scrape_cpu_ms: Optional[float]  # gateway CPU per scrape, from a window without pushes
    push_cpu_us: Optional[float]  # gateway CPU per push: the load window's CPU minus its scrapes'
    remote_write: bool = False
    stored_share: Optional[float] = None  # remote write: samples Prometheus appended / samples pushed

    def ingested(self) -> bool:
        if self.remote_write:
            return self.stored_share is not None and self.stored_share >= STORED_MIN
        return self.scrape_max_s is not None and self.scrape_max_s < SCRAPE_LIMIT and self.up_min == 1

    def passed(self) -> bool:
        return (
            self.failed == 0
            and self.prepopulate_failed == 0
            and self.p99_ms < P99_LIMIT * 1000
            and self.ingested()
            and self.achieved >= ACHIEVED_MIN * self.offered
        )

    def why_not(self) -> str:
        reasons = []
        if self.failed or self.prepopulate_failed:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items()))
            reasons.append(f"failed pushes ({kinds or f'prepopulate {self.prepopulate_failed}'})")
        if self.p99_ms >= P99_LIMIT * 1000:
            reasons.append("p99 >= 250 ms")
        if not self.ingested():
            reasons.append("stored < 95 % of pushed (or unknown)" if self.remote_write else "scrape >= 1 s or up 0")
        if self.achieved < ACHIEVED_MIN * self.offered:
            reasons.append("achieved < 95 % of offered")
        return "; ".join(reasons)


def percentile(values: List[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run_step(server: Server, generator: Generator, n: int, args: argparse.Namespace, series: int) -> Step:
    remote_write = server.gateway is None
    base = StepCommand(
        remote_write=remote_write,
        host="127.0.0.1",
        port=server.gateway_port,
        devices=n,
        prepopulate_only=True,
        start=0.0,
        duration=args.duration,
        interval=args.interval,
        timeout=args.timeout,
    )
    prepopulated = generator.run(base, timeout=120)
    pids = {
        "gen": generator.pids(),
        "gateway": [] if server.gateway is None else [server.gateway.pid],
        "prometheus": [server.prometheus.process.pid],
    }
    # A window of scrapes without pushes: the gateway's CPU per scrape of N groups, a figure that
    # contention on a shared machine stretches in time but hardly changes.
    time.sleep(args.interval + 0.5)
    quiet_cpu_before, quiet_start = sum(process_cpu(p) for p in pids["gateway"]), time.time()
    time.sleep(QUIET_SECONDS)
    quiet_cpu, quiet_end = sum(process_cpu(p) for p in pids["gateway"]) - quiet_cpu_before, time.time()
    cpu_before = {k: sum(process_cpu(p) for p in v) for k, v in pids.items()}
    busy_before, total_before = machine_cpu()
    start = time.monotonic() + 0.5
    wall_start = time.time() + 0.5
    appended_before = samples_appended(server) if remote_write else None
    load = StepCommand(**{**base.__dict__, "prepopulate_only": False, "start": start})
    result = generator.run(load, timeout=args.duration + 60)
    wall_end = time.time()
    stored = None
    appended_after = samples_appended(server) if remote_write else None
    if appended_before is not None and appended_after is not None:  # appended before each push was answered
        stored = (appended_after - appended_before) / max(1, len(result.latencies) * series)
    busy_after, total_after = machine_cpu()
    cpu_after = {k: sum(process_cpu(p) for p in v) for k, v in pids.items()}
    span = total_after - total_before
    cpu = {k: 100 * (cpu_after[k] - cpu_before[k]) / span for k in pids}
    cpu["machine"] = 100 * (busy_after - busy_before) / span
    cpu["other"] = cpu["machine"] - cpu["gen"] - cpu["gateway"] - cpu["prometheus"]
    time.sleep(2.5)  # the last scrape of the window is in the TSDB
    window = f"{max(1, int(wall_end - wall_start))}s"
    selector = '{job="pushgateway"}'
    over = f"{selector}[{window}]"
    failed = sum(result.failures.values())
    quiet = f"{selector}[{max(1, int(quiet_end - quiet_start))}s]"
    quiet_scrapes = prometheus_value(server, f"sum(count_over_time(up{quiet}))", quiet_end) or 0
    load_scrapes = prometheus_value(server, f"sum(count_over_time(up{over}))", wall_end) or 0
    scrape_cpu = quiet_cpu / quiet_scrapes if quiet_scrapes else None
    attempts = len(result.latencies) + failed
    gateway_cpu = (cpu_after["gateway"] - cpu_before["gateway"]) - (scrape_cpu or 0) * load_scrapes
    return Step(
        remote_write=remote_write,
        stored_share=stored,
        scrape_cpu_ms=None if scrape_cpu is None or remote_write else 1000 * scrape_cpu,
        push_cpu_us=None
        if remote_write or not attempts or scrape_cpu is None
        else 1e6 * max(0.0, gateway_cpu) / attempts,
        devices=n,
        offered=n / args.interval,
        achieved=len(result.latencies) / args.duration,
        failed=failed,
        failures=dict(result.failures + prepopulated.failures),
        p50_ms=1000 * percentile(result.latencies, 0.50),
        p99_ms=1000 * percentile(result.latencies, 0.99),
        lag_p99_ms=1000 * percentile(result.lags, 0.99),
        scrape_max_s=None
        if remote_write
        else prometheus_value(server, f"max(max_over_time(scrape_duration_seconds{over}))", wall_end),
        up_min=None if remote_write else prometheus_value(server, f"min(min_over_time(up{over}))", wall_end),
        samples=None
        if remote_write
        else prometheus_value(server, f"sum(max_over_time(scrape_samples_scraped{over}))", wall_end),
        prepopulate_failed=sum(prepopulated.failures.values()),
        cpu=cpu,
        load=loadavg(),
    )


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

HEADER = (
    f"{'subject':<14}{'N':>6}{'offered/s':>10}{'achieved/s':>11}{'failed':>8}{'p50 ms':>8}{'p99 ms':>8}"
    f"{'lag99 ms':>9}{'scrape s':>9}{'up':>4}{'samples':>9}{'gen%':>6}{'gw%':>6}{'prom%':>6}{'other%':>7}"
    f"{'scrapeCPU ms':>13}{'pushCPU us':>11}"
    f"  {'load 1/5/15':<17} {'verdict'}"
)


def fmt(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def row(label: str, step: Step) -> str:
    verdict = "pass" if step.passed() else f"FAIL: {step.why_not()}"
    return (
        f"{label:<14}{step.devices:>6}{step.offered:>10.0f}{step.achieved:>11.0f}"
        f"{step.failed + step.prepopulate_failed:>8}{step.p50_ms:>8.1f}{step.p99_ms:>8.1f}{step.lag_p99_ms:>9.1f}"
        f"{fmt(step.scrape_max_s, '.3f'):>9}{fmt(step.up_min, '.0f'):>4}{fmt(step.samples, '.0f'):>9}"
        f"{step.cpu['gen']:>6.1f}{step.cpu['gateway']:>6.1f}{step.cpu['prometheus']:>6.1f}{step.cpu['other']:>7.1f}"
        f"{fmt(step.scrape_cpu_ms, '.0f'):>13}{fmt(step.push_cpu_us, '.0f'):>11}"
        f"  {step.load:<17} {verdict}"
    )


def say(line: str = "") -> None:
    print(line, flush=True)


def binary_version(binary: str) -> str:
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return (result.stdout or result.stderr).splitlines()[0].strip()


def wire_bytes_per_sample(devices: List[Device], series: int, remote_write: bool) -> float:
    """Request bytes (head and body, as sent) per sample, over up to 200 devices."""
    sample = devices[:200]
    command = StepCommand("127.0.0.1", 9090, len(sample), False, 0.0, 1.0, 1.0, 1.0, remote_write)
    return sum(len(build_request(device, command)) for device in sample) / len(sample) / series


def header_lines(args: argparse.Namespace, exposition: str, devices: List[Device]) -> List[str]:
    sizes = sorted(len(d.body) for d in devices)
    series = series_per_device(exposition)
    wire = (
        f"wire bytes per sample (request head + body): pushgateway {wire_bytes_per_sample(devices, series, False):.1f}"
    )
    if devices[0].write_request:
        wire += f", remote write {wire_bytes_per_sample(devices, series, True):.1f} (snappy)"
    return [
        "# bench/ingest.py: devices one server ingests at a 1 s interval",
        f"host: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        f"pushgateway: {binary_version(PUSHGATEWAY_BIN)}",
        f"prometheus: {binary_version(PROMETHEUS_BIN)}",
        f"load average at start: {loadavg()}",
        f"payload: files/push_monitor.py --print --top-n 10: {series_per_device(exposition)} series per device "
        f"(+2 the gateway adds: push_time_seconds, push_failure_time_seconds), body {sizes[len(sizes) // 2]} bytes, "
        f"{len(devices)} distinct serials",
        wire,
        f"load: interval {args.interval:g} s, push timeout {args.timeout:g} s, {args.duration:g} s per step, "
        f"{args.workers} generator processes, ramp {','.join(map(str, args.ramp))}",
        f"pass: 0 failed pushes, p99 < {P99_LIMIT * 1000:.0f} ms, scrape_duration_seconds < {SCRAPE_LIMIT:g} s and "
        f"up == 1 all step, achieved >= {ACHIEVED_MIN:.0%} of offered",
        "CPU columns: percent of the whole machine (all cores) over the step's load window, from /proc;"
        " other% = everything else on this shared machine; lag99 = how late the generator itself started pushes",
        f"scrapeCPU ms: gateway CPU per scrape of the N groups, from {QUIET_SECONDS:g} s of scrapes "
        "without pushes; pushCPU us: gateway CPU per push (load window minus its scrapes); both hardly depend "
        "on contention",
    ]


def summary_lines(results: Dict[str, List[Step]]) -> List[str]:
    best = {label: max((st.devices for st in steps if st.passed()), default=0) for label, steps in results.items()}
    lines = ["", "# largest N with zero failed pushes, p99 < 250 ms and scrape < 1 s"]
    for subject, steps in results.items():
        passing = [st for st in steps if st.passed()]
        top = max(passing, key=lambda st: st.devices) if passing else None
        detail = (
            f" (p99 {top.p99_ms:.1f} ms, scrape {fmt(top.scrape_max_s, '.3f')} s, {top.achieved:.0f} pushes/s)"
            if top
            else ""
        )
        limited = "" if len(passing) < len(steps) else " (ramp ended without a failing step: a lower bound)"
        lines.append(f"{subject}: {best.get(subject, 0)} devices{detail}{limited}")
    stock, role = best.get("stock", 0), best.get("role", 0)
    if "stock" in results and "role" in results:
        if stock:
            ratio = role / stock
            verdict = "PASS" if ratio >= TARGET_RATIO else "MISS"
            lines.append(f"ratio role/stock = {ratio:.1f}x (target >= {TARGET_RATIO:g}x: {verdict})")
        else:  # no passing step to divide by: not a pass, whatever the numerator
            lines.append(f"ratio role/stock = n/a (stock passed no step; target >= {TARGET_RATIO:g}x: MISS)")
    if "role" in results:
        verdict = "PASS" if role >= TARGET_DEVICES else "MISS"
        lines.append(f"role devices = {role} (target >= {TARGET_DEVICES}: {verdict})")
    if "remote_write" in results and role:
        ratio = best["remote_write"] / role
        verdict = "PASS" if ratio >= TARGET_REMOTE_WRITE_RATIO else "MISS"
        lines.append(f"ratio remote_write/role = {ratio:.1f}x (target >= {TARGET_REMOTE_WRITE_RATIO:g}x: {verdict})")
    return lines


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def ramp_subject(
    subject: str, args: argparse.Namespace, generator: Generator, workdir: Path, deadline: float
) -> List[Step]:
    server = start_server(subject, workdir)
    steps: List[Step] = []
    try:
        say(f"## {subject}: {SUBJECTS[subject]}")
        say(f"   gateway flags: {' '.join(server.gateway_flags)}")
        say(f"   prometheus flags: {' '.join(server.prometheus_flags)}")
        for n in args.ramp:
            if time.monotonic() > deadline:
                say(f"   (stopped: --max-minutes {args.max_minutes:g} reached)")
                break
            if server.gateway is not None and server.gateway.poll() is not None:
                raise BenchError(f"the {subject} pushgateway exited")
            step = run_step(server, generator, n, args, args.series)
            steps.append(step)
            say(row(subject, step))
            if not step.passed():
                break
    finally:
        stop_server(server)
    return steps


def run(args: argparse.Namespace) -> None:
    for binary in (PUSHGATEWAY_BIN, PROMETHEUS_BIN):
        if not os.access(binary, os.X_OK):
            raise BenchError(f"{binary} is missing (apt install prometheus prometheus-pushgateway)")
    exposition = agent_exposition()
    devices = build_devices(max(args.ramp), exposition, "remote_write" in args.subjects)
    args.series = series_per_device(exposition)
    for line in header_lines(args, exposition, devices):
        say(line)
    deadline = time.monotonic() + 60 * args.max_minutes
    generator = Generator(args.workers, devices)
    results: Dict[str, List[Step]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            say("")
            say(HEADER)
            for subject in args.subjects:
                workdir = Path(tmp) / subject
                workdir.mkdir()
                results[subject] = ramp_subject(subject, args, generator, workdir, deadline)
    finally:
        generator.stop()
    for line in summary_lines(results):
        say(line)
    say(f"load average at end: {loadavg()}")


def interrupt(signum: int, _frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop every gateway, Prometheus and worker.
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        run(args)
    except BenchError as err:
        print(f"bench/ingest.py: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/ingest.py: interrupted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
