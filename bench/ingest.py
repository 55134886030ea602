#!/usr/bin/env python3
"""How many devices one server ingests at a 1 s interval: the stock Pushgateway (`stock`), the one the
roles configure (`role`) and the agent's remote write into the roles' Prometheus (`remote_write`), one
after the other in one run; the method, the commands, the columns and the results are in
docs/benchmarks.md. Exit 0 with the results, 1 if the benchmark cannot run, 2 on bad input."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import multiprocessing
import random
import re
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import snappy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # testkit: the roles' server config rendered, a real Prometheus
sys.path.insert(0, str(ROOT / "files"))  # push_monitor: the agent's collection, path and encoding

import push_monitor as pm  # noqa: E402, I001 (testkit.server's names on 2 lines, not 8)
from testkit.bench import BenchError, comma_list, machine, require_binaries, run_benchmark, verdict  # noqa: E402
from testkit.process import free_port, host_cpu_seconds, process_cpu_seconds  # noqa: E402
from testkit.server import PROMETHEUS_BIN, PUSHGATEWAY_BIN, Prometheus, Pushgateway, role_prometheus  # noqa: E402
from testkit.server import role_pushgateway_flags  # noqa: E402
from testkit.web import Endpoint  # noqa: E402

DEFAULT_RAMP = "25,50,100,250,500,1000,1500,2000,2500,3000,3500,4000"
QUICK_RAMP = "5,10"
# Interfaces of the containers other jobs run here: a device has none, and keeping them would make
# the payload depend on the moment of the run.
HOST_PLUMBING = re.compile(r"^(veth|podman|cni|br-|docker)")
TIMEOUT = 0.8  # the agent's default at a 1 s interval
WORKERS = 2
MAX_MINUTES = 20.0
QUIET_SECONDS = 4.0
P99_LIMIT = 0.25
SCRAPE_LIMIT = 1.0
ACHIEVED_MIN = 0.95
STORED_MIN = 0.95
TARGET_DEVICES = 2000
TARGET_RATIO = 20.0
TARGET_REMOTE_WRITE_RATIO = 3.0
SUBJECTS = {
    "stock": "Debian's Pushgateway, stock flags",
    "role": "the flags roles/pushgateway renders",
    "remote_write": "the agent's remote write to the role's Prometheus, receiver on",
}


# The load generator: each worker process owns every WORKERS-th device and keeps one kept-alive HTTP/1.1
# connection per device, as the agent does. Latency runs from writing the request to the last response byte.
# A batch's cycle i is stamped PLACEHOLDER_MS + i, a 6-byte varint as current ms timestamps are, whose bytes
# hardly occur in a request otherwise: each send replaces them with the current times.
PLACEHOLDER_MS = (1 << 41) + 0x3F_FFFF_FF00
PLACEHOLDERS = [pm.varint(PLACEHOLDER_MS + cycle) for cycle in range(64)]


@dataclass
class Device:
    path: str  # the device's group at the Pushgateway
    body: bytes  # the agent's text exposition of one cycle
    phase: float  # share of its period after the step's start at which it sends
    # The cycles of one send as the agent encodes them (one TimeSeries per series), placeholder-stamped:
    # every send gets the current times and is compressed anew.
    write_request: bytes = b""
    samples: int = 0  # in write_request


@dataclass
class StepCommand:
    """What one worker does for one step; sent over a pipe, so plain data only."""

    port: int
    devices: int  # devices 0..devices-1 exist in this step
    remote_write: bool
    cycles: int  # 1 s cycles per request, and so seconds between a device's requests
    duration: float = 0.0
    start: Optional[float] = None  # time.monotonic() (system-wide) the load starts; None: send once for new devices
    timeout: float = TIMEOUT


@dataclass
class StepResult:
    latencies: List[float] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)


def build_request(device: Device, cmd: StepCommand) -> bytes:
    if cmd.remote_write:
        # The cycles of the last cmd.cycles seconds, the newest now.
        now_ms = int(time.time() * 1000)
        body = device.write_request
        for cycle in range(cmd.cycles):
            body = body.replace(PLACEHOLDERS[cycle], pm.varint(now_ms - 1000 * (cmd.cycles - 1 - cycle)))
        body = snappy.compress(body)
        line = "POST /api/v1/write"
        kind = "application/x-protobuf\r\nContent-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0"
    else:
        body, line, kind = device.body, f"PUT {device.path}", "text/plain; version=0.0.4; charset=utf-8"
    head = (
        f"{line} HTTP/1.1\r\nHost: 127.0.0.1:{cmd.port}\r\nUser-Agent: push_monitor/bench-ingest\r\n"
        f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class HttpExchange(asyncio.Protocol):
    """One HTTP/1.1 client connection's responses, framed by Content-Length: each one settles the waiter of
    the request before it. A raw protocol rather than asyncio streams: no task per request, so the
    generator stays light."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: Optional[asyncio.Future] = None

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        lengths = [line.split(":", 1)[1] for line in head[1:] if line.lower().startswith("content-length:")]
        size = end + 4 + (int(lengths[0]) if lengths else 0)
        if len(self.buffer) >= size:
            del self.buffer[:size]
            self.waiter.set_result(int(head[0].split()[1]))


class Worker:
    """One load-generating process: its share of the devices, their connections and the devices it has
    sent for once, per server port (a subject's server keeps its port for all its steps)."""

    def __init__(self, number: int, devices: List[Device]) -> None:
        self.number, self.devices = number, devices
        self.connections: Dict[Tuple[int, int], Tuple[asyncio.Transport, HttpExchange]] = {}
        self.populated: Set[Tuple[int, int]] = set()

    async def push(self, index: int, cmd: StepCommand, result: StepResult) -> bool:
        request, loop, key = build_request(self.devices[index], cmd), asyncio.get_running_loop(), (cmd.port, index)
        started = time.perf_counter()
        transport, protocol = self.connections.get(key, (None, None))
        try:
            # A connection the server closed (its transport closes itself after the EOF) is opened anew.
            if transport is None or protocol is None or transport.is_closing():
                connecting = loop.create_connection(HttpExchange, "127.0.0.1", cmd.port)
                transport, protocol = self.connections[key] = await asyncio.wait_for(connecting, cmd.timeout)
            protocol.waiter = loop.create_future()
            transport.write(request)
            status = await asyncio.wait_for(protocol.waiter, max(cmd.timeout - (time.perf_counter() - started), 0.001))
        except (asyncio.TimeoutError, OSError) as err:
            # The agent closes a connection after a timeout or error and opens a fresh one next time.
            result.failures["timeout" if isinstance(err, asyncio.TimeoutError) else type(err).__name__] += 1
            if transport is not None:
                transport.close()
            self.connections.pop(key, None)
            return False
        if not 200 <= status < 300:
            result.failures[f"http-{status}"] += 1
            return False
        result.latencies.append(time.perf_counter() - started)
        return True

    async def step(self, cmd: StepCommand) -> StepResult:
        """Without a start: sends once for every new device, so that the step starts with N groups (or N
        devices' series). With one: each device sends on its grid until the step's end."""
        result, mine = StepResult(), range(self.number, cmd.devices, WORKERS)
        if cmd.start is None:
            limit, patient = asyncio.Semaphore(32), dataclasses.replace(cmd, timeout=max(cmd.timeout, 10.0))

            async def once(index: int) -> None:
                async with limit:
                    if await self.push(index, patient, result):
                        self.populated.add((cmd.port, index))

            await asyncio.gather(*(once(index) for index in mine if (cmd.port, index) not in self.populated))
        else:
            await asyncio.gather(*(self.device_loop(index, cmd, cmd.start, result) for index in mine))
        return result

    async def device_loop(self, index: int, cmd: StepCommand, start: float, result: StepResult) -> None:
        slot, end = start + self.devices[index].phase * cmd.cycles, start + cmd.duration
        while slot < end:
            delay = slot - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.push(index, cmd, result)
            slot += max(1, math.ceil((time.monotonic() - slot) / cmd.cycles)) * cmd.cycles


def worker_main(worker: Worker, pipe) -> None:  # noqa: ANN001 (a Connection)
    """Serves step commands from the pipe until it gets None; answers each with a StepResult (or the error)."""
    loop = asyncio.new_event_loop()  # one loop for the worker's life: kept-alive connections outlive a step
    for cmd in iter(pipe.recv, None):
        try:
            pipe.send(loop.run_until_complete(worker.step(cmd)))
        except Exception as err:  # report, do not hang the parent
            pipe.send(err)
    for transport, _ in worker.connections.values():
        transport.close()
    loop.run_until_complete(asyncio.sleep(0))  # the transports close
    loop.close()


class Generator:
    """WORKERS processes, each owning every WORKERS-th device, driven step by step over pipes."""

    def __init__(self, devices: List[Device]) -> None:
        self.devices = devices
        context = multiprocessing.get_context("fork")
        self.pipes, self.processes = [], []
        for number in range(WORKERS):
            parent, child = context.Pipe()
            process = context.Process(target=worker_main, args=(Worker(number, devices), child), daemon=True)
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)

    def run(self, cmd: StepCommand, timeout: float) -> StepResult:
        for pipe in self.pipes:
            pipe.send(cmd)
        merged, deadline = StepResult(), time.monotonic() + timeout
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise BenchError(f"a load generator worker did not finish within {timeout:.0f} s")
            answer = pipe.recv()
            if isinstance(answer, Exception):
                raise BenchError(f"a load generator worker failed: {answer!r}")
            merged.latencies += answer.latencies
            merged.failures += answer.failures
        return merged

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):  # a worker that is gone already
                pipe.send(None)
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)


def whole_seconds(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 60:
        raise argparse.ArgumentTypeError(f"{raw!r}: expected whole seconds from 1 to 60")
    return int(raw)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/ingest.py", description=__doc__.split("\n\n")[0])
    ramp = comma_list(int, lambda n: n == sorted(set(n)) and n[0] >= 1, "expected increasing positive device counts")
    subjects = comma_list(str, set(SUBJECTS).issuperset, f"choose from {', '.join(SUBJECTS)}")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: ramp {QUICK_RAMP}, 3 s steps")
    parser.add_argument("--subjects", type=subjects, default=list(SUBJECTS),
                        help=f"comma-separated [default {','.join(SUBJECTS)}]")  # fmt: skip
    parser.add_argument("--ramp", type=ramp, help=f"device counts, increasing [default {DEFAULT_RAMP}]")
    parser.add_argument("--duration", type=whole_seconds, help="seconds of load per step, rounded up to whole "
                        "send intervals for remote write [default 15]")  # fmt: skip
    parser.add_argument("--send-interval", type=whole_seconds, default=int(pm.DEFAULT_SEND_INTERVAL),
                        help="remote write: seconds between a device's requests, each with that many 1 s "
                        f"cycles [default {pm.DEFAULT_SEND_INTERVAL:g}, the agent's at a 1 s interval]")  # fmt: skip
    args = parser.parse_args(argv)
    args.ramp = args.ramp or ramp(QUICK_RAMP if args.quick else DEFAULT_RAMP)
    args.subjects = [name for name in SUBJECTS if name in args.subjects]
    args.duration = args.duration or (3 if args.quick else 15)
    return args


def device_cycles(count: int) -> List[List[pm.Family]]:
    """`count` cycles of this host's metrics 1 s apart, collected by the agent's code (top-n 10)."""
    sampler = pm.Sampler(10)
    sampler.sample()  # the baseline for the CPU figures, as the agent's first cycle has
    cycles = []
    for _ in range(count):
        time.sleep(1.0)
        families = pm.Exposition("", "", 1.0).families(sampler.sample(), time.time())
        cycles.append([family._replace(samples=kept) for family in families if (kept := device_samples(family))])
    return cycles


def device_samples(family: pm.Family) -> List[Tuple[pm.Labels, float]]:
    return [(labels, value) for labels, value in family.samples
            if not any(name == "interface" and HOST_PLUMBING.match(text) for name, text in labels)]  # fmt: skip


def realistic_serial(rng: random.Random, index: int) -> str:
    """Serials in the shapes real fleets report: service tags, laptop and SoC serials, and now and then
    one with a space or a slash (sent base64-encoded in the path, as the agent does)."""
    upper = string.ascii_uppercase + string.digits
    if index % 97 == 13:
        return f"SN {rng.randint(1000, 9999)}/{rng.choice('ABCDEF')}{index}"
    prefix, alphabet, length = [("", upper, 7), ("PF", upper, 6), ("C02", upper, 9),
                                ("10000000", "0123456789abcdef", 8), ("5CG", upper, 7)][index % 5]  # fmt: skip
    return prefix + "".join(rng.choices(alphabet, k=length))


def build_devices(count: int, cycles: List[List[pm.Family]], send_interval: int) -> List[Device]:
    rng = random.Random(20261125)
    seen: set = set()
    devices = []
    for index in range(count):
        serial = realistic_serial(rng, index)
        while serial in seen:
            serial = realistic_serial(rng, index)
        seen.add(serial)
        host = f"{rng.choice(['pos', 'kiosk', 'edge', 'lab'])}-{rng.randint(1, 400):03d}-{index:05d}"
        exposition = pm.Exposition(serial, host, 1.0)
        # The agent's request for a send interval's cycles, cycle i stamped PLACEHOLDER_MS + i.
        encoder, batch = pm.WriteRequestEncoder(pm.DEFAULT_JOB, exposition.device_labels), pm.SeriesBatch()
        for cycle, families in enumerate(cycles[:send_interval]):
            encoder.add(batch, families, PLACEHOLDER_MS + cycle)
        text = exposition.text(cycles[0])
        path = pm.grouping_path(pm.DEFAULT_JOB, serial)
        devices.append(Device(path, text, rng.random(), batch.encode(), batch.samples))
    return devices


def wire_bytes_per_sample(cycles: List[List[pm.Family]], remote_write: bool, send_interval: int = 1) -> float:
    """Request bytes (head and body, as sent) per sample, over 200 devices."""
    devices = build_devices(200, cycles, send_interval)
    command = StepCommand(9090, 200, remote_write, send_interval)
    samples = devices[0].samples if remote_write else sum(len(family.samples) for family in cycles[0])
    return sum(len(build_request(device, command)) for device in devices) / 200 / samples


@dataclass
class Server:
    gateway: Optional[Pushgateway]  # None for remote write: the devices write to Prometheus
    port: int  # where the devices send: the gateway, or Prometheus' receiver
    prometheus: Prometheus

    def value(self, expr: str, at: float) -> Optional[float]:
        """A PromQL query's first value at `at`; None when there is none or Prometheus does not answer."""
        try:
            result = self.prometheus.api("query", query=expr, time=f"{at:.3f}")["result"]
        except (AssertionError, OSError, ValueError):
            return None
        return float(result[0]["value"][1]) if result else None

    def samples_appended(self) -> Optional[float]:
        """From Prometheus' own /metrics; None when it does not answer within 30 s (the step then fails)."""
        try:
            return Endpoint(self.prometheus.url).counter("prometheus_tsdb_head_samples_appended_total", timeout=30)
        except OSError:
            return None


@dataclass
class Step:
    devices: int
    offered: float  # requests per second
    achieved: float
    failed: int  # the load's and the prepopulation's
    failures: Dict[str, int]
    p99_ms: float
    cpu: Dict[str, float]  # percent of the whole machine (all cores)
    remote_write: bool
    scrape_max_s: Optional[float] = None  # the gateway subjects
    up_min: Optional[float] = None
    samples: Optional[float] = None
    scrape_cpu_ms: Optional[float] = None  # gateway CPU per scrape, from a window without pushes
    push_cpu_us: Optional[float] = None  # gateway CPU per push: the load window's CPU minus its scrapes'
    stored_share: Optional[float] = None  # remote write: samples Prometheus appended / samples sent

    def why_not(self) -> str:
        # An unknown share or scrape duration (Prometheus did not answer) is not a pass.
        if self.remote_write:
            ingested, missed = (self.stored_share or 0) >= STORED_MIN, "stored < 95 % of sent (or unknown)"
        else:
            scrape_ok = self.scrape_max_s is not None and self.scrape_max_s < SCRAPE_LIMIT
            ingested, missed = scrape_ok and self.up_min == 1, "scrape >= 1 s or up 0"
        failures = ", ".join(f"{kind} {count}" for kind, count in sorted(self.failures.items()))
        return "; ".join(reason for failed, reason in [
            (self.failed, f"failed requests ({failures})"), (not self.p99_ms < P99_LIMIT * 1000, "p99 >= 250 ms"),
            (not ingested, missed), (self.achieved < ACHIEVED_MIN * self.offered, "achieved < 95 % of offered"),
        ] if failed)  # fmt: skip

    def passed(self) -> bool:
        return not self.why_not()


def percentile(values: List[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def run_step(server: Server, generator: Generator, n: int, args: argparse.Namespace) -> Step:
    remote_write = server.gateway is None
    cycles = args.send_interval if remote_write else 1
    duration = math.ceil(args.duration / cycles) * cycles  # whole send intervals: every device sends as often
    base = StepCommand(server.port, n, remote_write, cycles, duration)
    prepopulated = generator.run(base, timeout=120)
    gateway = [] if server.gateway is None else [server.gateway.process.pid]
    pids = {"gen": [p.pid for p in generator.processes], "gateway": gateway,
            "prometheus": [server.prometheus.process.pid]}  # fmt: skip
    quiet_cpu = quiet_start = quiet_end = 0.0
    if remote_write:
        time.sleep(cycles)  # every sample of the load newer than the prepopulation's: no out-of-order appends
    else:
        # Scrapes without pushes: the gateway's CPU per scrape of N groups, a figure that contention on
        # a shared machine stretches in time but hardly changes.
        time.sleep(1.5)
        quiet_cpu, quiet_start = sum(map(process_cpu_seconds, gateway)), time.time()
        time.sleep(QUIET_SECONDS)
        quiet_cpu, quiet_end = sum(map(process_cpu_seconds, gateway)) - quiet_cpu, time.time()
    cpu_before = {k: sum(map(process_cpu_seconds, v)) for k, v in pids.items()}
    busy_before, total_before = host_cpu_seconds()
    wall_start = time.time() + 0.5
    appended_before = server.samples_appended() if remote_write else None
    result = generator.run(dataclasses.replace(base, start=time.monotonic() + 0.5), timeout=duration + 60)
    wall_end = time.time()
    busy_after, total_after = host_cpu_seconds()
    used = {k: sum(map(process_cpu_seconds, v)) - cpu_before[k] for k, v in pids.items()}
    cpu = {k: 100 * seconds / (total_after - total_before) for k, seconds in used.items()}
    cpu["machine"] = 100 * (busy_after - busy_before) / (total_after - total_before)
    cpu["other"] = cpu["machine"] - cpu["gen"] - cpu["gateway"] - cpu["prometheus"]
    step = Step(
        devices=n, offered=n / cycles, achieved=len(result.latencies) / duration,
        failed=sum(result.failures.values()) + sum(prepopulated.failures.values()),
        failures=dict(result.failures + prepopulated.failures), p99_ms=1000 * percentile(result.latencies, 0.99),
        cpu=cpu, remote_write=remote_write,
    )  # fmt: skip
    if remote_write:
        # Appended before each request was answered: the counter is complete when the load ends.
        appended_after = server.samples_appended()
        if appended_before is not None and appended_after is not None:
            sent = max(1, len(result.latencies) * generator.devices[0].samples)
            step.stored_share = (appended_after - appended_before) / sent
        return step
    time.sleep(2.5)  # the last scrape of the window is in the TSDB
    over = f'{{job="pushgateway"}}[{max(1, int(wall_end - wall_start))}s]'
    step.scrape_max_s = server.value(f"max(max_over_time(scrape_duration_seconds{over}))", wall_end)
    step.up_min = server.value(f"min(min_over_time(up{over}))", wall_end)
    step.samples = server.value(f"sum(max_over_time(scrape_samples_scraped{over}))", wall_end)
    quiet = f'{{job="pushgateway"}}[{max(1, int(quiet_end - quiet_start))}s]'
    quiet_scrapes = server.value(f"sum(count_over_time(up{quiet}))", quiet_end)
    load_scrapes = server.value(f"sum(count_over_time(up{over}))", wall_end) or 0
    pushes = len(result.latencies) + sum(result.failures.values())
    if quiet_scrapes:
        step.scrape_cpu_ms = 1000 * quiet_cpu / quiet_scrapes
        if pushes:
            step.push_cpu_us = 1e6 * max(0.0, used["gateway"] - quiet_cpu / quiet_scrapes * load_scrapes) / pushes
    return step


HEADER = (
    f"{'subject':<14}{'N':>6}{'offered/s':>10}{'achieved/s':>11}{'failed':>8}{'p99 ms':>8}{'scrape s':>9}{'up':>4}"
    f"{'samples':>9}{'gen%':>6}{'gw%':>6}{'prom%':>6}{'other%':>7}{'scrapeCPU ms':>13}{'pushCPU us':>11}  verdict"
)


def fmt(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def row(label: str, step: Step) -> str:
    cpu = step.cpu
    return (
        f"{label:<14}{step.devices:>6}{step.offered:>10.0f}{step.achieved:>11.0f}{step.failed:>8}"
        f"{step.p99_ms:>8.1f}{fmt(step.scrape_max_s, '.3f'):>9}{fmt(step.up_min, '.0f'):>4}"
        f"{fmt(step.samples, '.0f'):>9}{cpu['gen']:>6.1f}{cpu['gateway']:>6.1f}{cpu['prometheus']:>6.1f}"
        f"{cpu['other']:>7.1f}{fmt(step.scrape_cpu_ms, '.0f'):>13}{fmt(step.push_cpu_us, '.0f'):>11}"
        f"  {'pass' if step.passed() else 'FAIL: ' + step.why_not()}"
    )


def binary_version(binary: str) -> str:
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return (result.stdout or result.stderr).splitlines()[0].strip()


def header_lines(args: argparse.Namespace, cycles: List[List[pm.Family]], devices: List[Device]) -> List[str]:
    series, interval = sum(len(family.samples) for family in cycles[0]), args.send_interval
    wire = f"wire bytes per sample (request head + body): pushgateway {wire_bytes_per_sample(cycles, False):.1f}"
    wire += f", remote write {wire_bytes_per_sample(cycles, True, interval):.1f} (send interval {interval} s)"
    wire += f", {wire_bytes_per_sample(cycles, True):.1f} (send interval 1 s)"
    return [
        "# bench/ingest.py: devices one server ingests at a 1 s interval",
        f"machine: {machine()}",
        f"pushgateway: {binary_version(PUSHGATEWAY_BIN)}; prometheus: {binary_version(PROMETHEUS_BIN)}",
        f"payload: the agent's collection and encoding, top-n 10: {series} series per device (+2 the gateway adds: "
        f"push_time_seconds, push_failure_time_seconds), text body {len(devices[0].body)} bytes, "
        f"{len(devices)} distinct serials",
        wire,
        f"load: 1 s cycles, remote write one request per {interval} s per device, timeout {TIMEOUT:g} s, "
        f"{args.duration} s per step, {WORKERS} generator processes, ramp {','.join(map(str, args.ramp))}",
    ]


def summary_lines(results: Dict[str, List[Step]]) -> List[str]:
    lines, best = ["", "# largest N that passed"], {}
    for subject, steps in results.items():
        top = max((st for st in steps if st.passed()), key=lambda st: st.devices, default=None)
        best[subject] = top.devices if top else 0
        scrape = "" if top is None or top.remote_write else f", scrape {fmt(top.scrape_max_s, '.3f')} s"
        detail = f" (p99 {top.p99_ms:.1f} ms{scrape})" if top else ""
        bound = " (ramp ended without a failing step: a lower bound)" if all(st.passed() for st in steps) else ""
        lines.append(f"{subject}: {best[subject]} devices{detail}{bound}")
    stock, role = best.get("stock", 0), best.get("role", 0)
    if "stock" in results and "role" in results:  # no passing stock step to divide by: not a pass
        ratio = f"{role / stock:.1f}x (" if stock else "n/a (stock passed no step; "
        met = bool(stock) and role / stock >= TARGET_RATIO
        lines.append(f"ratio role/stock = {ratio}target >= {TARGET_RATIO:g}x: {verdict(met)})")
    if "role" in results:
        lines.append(f"role devices = {role} (target >= {TARGET_DEVICES}: {verdict(role >= TARGET_DEVICES)})")
    if "remote_write" in results and role:
        ratio, target = best["remote_write"] / role, TARGET_REMOTE_WRITE_RATIO
        lines.append(f"ratio remote_write/role = {ratio:.1f}x (target >= {target:g}x: {verdict(ratio >= target)})")
    return lines


def ramp_subject(
    subject: str, args: argparse.Namespace, generator: Generator, workdir: Path, *, deadline: float, steps: List[Step]
) -> Iterator[str]:
    """The subject's servers, then its ramp (into steps) until a step fails; yields the lines to print."""
    remote_write, prometheus_port = subject == "remote_write", free_port()
    gateway = Pushgateway(workdir, port=free_port())  # remote_write starts none: Prometheus' target stays down
    prometheus, rendered = role_prometheus(workdir, {
        "prometheus_pushgateway_targets": [f"127.0.0.1:{gateway.port}"],
        "prometheus_self_target": f"127.0.0.1:{prometheus_port}",
        "prometheus_remote_write_receiver": remote_write,
    }, prometheus_port)  # fmt: skip
    gateway.extra_args = role_pushgateway_flags(rendered) if subject == "role" else []
    server = Server(None, prometheus_port, prometheus) if remote_write else Server(gateway, gateway.port, prometheus)
    try:
        if server.gateway is not None:
            gateway.start()
        prometheus.start()
        yield f"## {subject}: {SUBJECTS[subject]}"
        yield f"   gateway flags: {' '.join(gateway.args) if server.gateway else ''}"
        yield f"   prometheus flags: {' '.join(prometheus.args)}"
        for n in args.ramp:
            if time.monotonic() > deadline:
                yield f"   (stopped: {MAX_MINUTES:g} minutes reached)"
                break
            if server.gateway is not None and gateway.process.poll() is not None:
                raise BenchError(f"the {subject} pushgateway exited")
            steps.append(run_step(server, generator, n, args))
            yield row(subject, steps[-1])
            if not steps[-1].passed():
                break
    finally:
        prometheus.stop()
        gateway.stop()


def measure(args: argparse.Namespace) -> Iterator[str]:
    require_binaries(PUSHGATEWAY_BIN, PROMETHEUS_BIN)
    cycles = device_cycles(args.send_interval)
    devices = build_devices(max(args.ramp), cycles, args.send_interval)
    yield from header_lines(args, cycles, devices)
    deadline = time.monotonic() + 60 * MAX_MINUTES
    generator = Generator(devices)
    results: Dict[str, List[Step]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
            yield from ("", HEADER)
            for subject in args.subjects:
                (workdir := Path(tmp) / subject).mkdir()
                steps = results.setdefault(subject, [])
                yield from ramp_subject(subject, args, generator, workdir, deadline=deadline, steps=steps)
    finally:
        generator.stop()
    yield from summary_lines(results)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return run_benchmark("bench/ingest.py", lambda: measure(args))


if __name__ == "__main__":
    sys.exit(main())
