#!/usr/bin/env python3
"""The straightforward way to write the push agent, the yardstick bench/agent_cost.py measures it against
(not part of the product). Same metrics, interval and Pushgateway group as files/push_monitor.py, written
the way most examples do it: psutil.process_iter with cpu_percent / memory_info / name, prometheus_client
Gauges with labels, and push_to_gateway every cycle. Not tuned, but not made worse than it needs to be:
process_iter keeps its Process objects between calls, so cpu_percent(interval=None) gives real deltas
without sleeping inside a cycle."""

from __future__ import annotations

import argparse
import math
import signal
import socket
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import psutil
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway


class Metrics:
    """One labelled Gauge per metric name, all in one registry that is pushed as a whole."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        base = ["device_serial", "hostname"]
        per_app = [*base, "app"]
        per_interface = [*base, "interface"]

        def gauge(name: str, documentation: str, labels: List[str]) -> Gauge:
            return Gauge(name, documentation, labels, registry=self.registry)

        self.total_cpu = gauge("total_cpu_usage_percent", "CPU usage over all cores, 0-100.", base)
        self.memory_percent = gauge("total_memory_usage_percent", "Memory in use, percent.", base)
        self.memory_total = gauge("memory_total_bytes", "Total physical memory.", base)
        self.memory_available = gauge("memory_available_bytes", "Available memory.", base)
        self.memory_used = gauge("memory_used_bytes", "Memory in use.", base)
        self.swap_total = gauge("swap_total_bytes", "Total swap.", base)
        self.swap_used = gauge("swap_used_bytes", "Swap in use.", base)
        self.load = {m: gauge(f"load_average_{m}m", f"Load average, {m} min.", base) for m in (1, 5, 15)}
        self.boot_time = gauge("boot_time_seconds", "Unix time the system booted.", base)
        self.system_processes = gauge("system_processes", "Processes running.", base)
        self.app_cpu = gauge("app_cpu_usage_percent", "CPU of the top apps, percent of one core.", per_app)
        self.app_memory = gauge("app_memory_usage_mb", "Resident memory of the top apps in MiB.", per_app)
        self.network = {
            attribute: gauge(name, f"Interface counter {attribute}.", per_interface)
            for name, attribute in (
                ("network_receive_bytes_total", "bytes_recv"),
                ("network_transmit_bytes_total", "bytes_sent"),
                ("network_receive_packets_total", "packets_recv"),
                ("network_transmit_packets_total", "packets_sent"),
                ("network_receive_errors_total", "errin"),
                ("network_transmit_errors_total", "errout"),
            )
        }
        self.interval = gauge("push_monitor_interval_seconds", "Push interval.", base)
        self.duration = gauge("push_monitor_collection_duration_seconds", "Last collection time.", base)


def top_apps(top_n: int) -> Tuple[List[Tuple[str, float, int]], int]:
    """(name, cpu percent, rss bytes) of the top-N names by CPU, and the number of processes."""
    cpu: Dict[str, float] = {}
    memory: Dict[str, int] = {}
    count = 0
    for process in psutil.process_iter(["name", "cpu_percent", "memory_info"]):
        info = process.info
        count += 1
        name = info["name"] or "?"
        cpu[name] = cpu.get(name, 0.0) + (info["cpu_percent"] or 0.0)
        memory[name] = memory.get(name, 0) + (info["memory_info"].rss if info["memory_info"] else 0)
    ranked = sorted(cpu, key=lambda name: (cpu[name], memory[name]), reverse=True)[:top_n]
    return [(name, cpu[name], memory[name]) for name in ranked], count


def collect(metrics: Metrics, identity: Sequence[str], top_n: int, interval: float) -> None:
    started = time.monotonic()
    apps, count = top_apps(top_n)
    metrics.app_cpu.clear()  # apps that left the top-N must disappear
    metrics.app_memory.clear()
    for name, cpu_percent, rss in apps:
        metrics.app_cpu.labels(*identity, name).set(cpu_percent)
        metrics.app_memory.labels(*identity, name).set(rss / 1048576)
    memory = psutil.virtual_memory()
    swap = psutil.swap_memory()
    metrics.total_cpu.labels(*identity).set(psutil.cpu_percent(interval=None))
    metrics.memory_percent.labels(*identity).set(memory.percent)
    metrics.memory_total.labels(*identity).set(memory.total)
    metrics.memory_available.labels(*identity).set(memory.available)
    metrics.memory_used.labels(*identity).set(memory.total - memory.available)
    metrics.swap_total.labels(*identity).set(swap.total)
    metrics.swap_used.labels(*identity).set(swap.used)
    for minutes, value in zip((1, 5, 15), psutil.getloadavg()):
        metrics.load[minutes].labels(*identity).set(value)
    metrics.boot_time.labels(*identity).set(psutil.boot_time())
    metrics.system_processes.labels(*identity).set(count)
    for interface, counters in psutil.net_io_counters(pernic=True).items():
        for attribute, gauge in metrics.network.items():
            gauge.labels(*identity, interface).set(getattr(counters, attribute))
    metrics.interval.labels(*identity).set(interval)
    metrics.duration.labels(*identity).set(time.monotonic() - started)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Straightforward psutil push agent (benchmark yardstick).")
    parser.add_argument("--pushgateway", default="http://localhost:9091", help="Pushgateway URL")
    parser.add_argument("--interval", type=float, default=1.0, help="push interval in seconds")
    parser.add_argument("--job", default="device-metrics", help="job label")
    parser.add_argument("--top-n", type=int, default=10, help="number of top apps by CPU")
    parser.add_argument("--device-serial", default="naive-agent", help="device_serial label and grouping key")
    args = parser.parse_args(argv)
    if not math.isfinite(args.interval) or args.interval <= 0:
        parser.error("--interval must be a finite number of seconds > 0")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    identity, group = [args.device_serial, socket.gethostname()], {"device_serial": args.device_serial}
    metrics, timeout = Metrics(), args.interval * 0.8
    psutil.cpu_percent(interval=None)  # start the deltas for the first cycle
    next_push = time.monotonic() + args.interval
    try:
        while True:
            time.sleep(max(0.0, next_push - time.monotonic()))
            next_push += args.interval
            collect(metrics, identity, args.top_n, args.interval)
            try:
                push_to_gateway(args.pushgateway, args.job, metrics.registry, grouping_key=group, timeout=timeout)
            except OSError as err:
                print(f"naive_agent: push failed: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
