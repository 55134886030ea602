#!/usr/bin/env python3
"""Fault helpers run inside the gateway container (stdlib only); each prints one JSON object.

  gateway_faults.py fresh --after T --timeout S JOB=SERIAL...
      waits until every group has a push_time_seconds newer than T (epoch seconds) and reports
      the first such push time per group (null for a group that never got one in time).
  gateway_faults.py restart --down S --timeout S --service NAME --persistence-file PATH JOB=SERIAL...
      pushes a canary group nobody else pushes, stops the Pushgateway's systemd service for S
      seconds, starts it, reads every group as soon as it is ready (what persistence kept), then
      waits for a fresh push of every device group.

Push times are the gateway's own clock; the containers share the host's kernel clock, so times
taken on the devices or the controller compare directly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional

GATEWAY = "http://localhost:9091"
CANARY_PATH = "/metrics/job/fleet-fault-canary"
CANARY_KEY = "fleet-fault-canary="
POLL_SECONDS = 0.1


def push_times() -> Dict[str, float]:
    """JOB=SERIAL (JOB= for a group without a serial) -> push_time_seconds."""
    with urllib.request.urlopen(GATEWAY + "/api/v1/metrics", timeout=5) as response:
        groups = json.load(response)["data"]
    times = {}
    for group in groups:
        labels = group.get("labels", {})
        metrics = group.get("push_time_seconds", {}).get("metrics", [])
        if metrics:
            times[f"{labels.get('job')}={labels.get('device_serial', '')}"] = float(metrics[0]["value"])
    return times


def wait_fresh(groups: List[str], after: float, timeout: float) -> Dict[str, Optional[float]]:
    first: Dict[str, Optional[float]] = {group: None for group in groups}
    deadline = time.monotonic() + timeout
    # At least one look, so that --timeout 0 asks "has it pushed since?" right now.
    while True:
        try:
            current = push_times()
        except (OSError, ValueError):
            current = {}
        for group in groups:
            if first[group] is None and current.get(group, 0.0) > after:
                first[group] = current[group]
        if None not in first.values() or time.monotonic() >= deadline:
            return first
        time.sleep(POLL_SECONDS)


def wait_ready(timeout: float) -> Optional[float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(GATEWAY + "/-/ready", timeout=2) as response:
                if response.status == 200:
                    return time.time()
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(POLL_SECONDS)
    return None


def push_canary() -> None:
    request = urllib.request.Request(GATEWAY + CANARY_PATH, data=b"fleet_fault_canary 1\n", method="PUT")
    urllib.request.urlopen(request, timeout=5).close()


def delete_canary() -> None:
    request = urllib.request.Request(GATEWAY + CANARY_PATH, method="DELETE")
    urllib.request.urlopen(request, timeout=5).close()


def systemctl(action: str, service: str) -> None:
    subprocess.run(["systemctl", action, service], check=True)


def restart(args: argparse.Namespace) -> dict:
    push_canary()
    time.sleep(0.5)
    before = push_times()
    stop_requested = time.time()
    systemctl("stop", args.service)
    stopped = time.time()
    persistence_mtime = os.stat(args.persistence_file).st_mtime if os.path.exists(args.persistence_file) else None
    # Down for S seconds from the moment it is stopped: a stop that takes long (the persistence file
    # is written then) shortens nothing.
    time.sleep(max(0.0, stopped + args.down - time.time()))
    start_requested = time.time()
    systemctl("start", args.service)
    ready = wait_ready(args.timeout)
    at_ready = push_times() if ready is not None else {}
    fresh = wait_fresh(args.groups, ready, args.timeout) if ready is not None else {}
    delete_canary()
    canary = next((key for key in before if key.startswith(CANARY_KEY)), None)
    return {
        "stop_requested": stop_requested,
        "stopped": stopped,
        "start_requested": start_requested,
        "ready": ready,
        "down_seconds": start_requested - stopped,
        "persistence_file_written_at_stop": persistence_mtime is not None and persistence_mtime >= stop_requested,
        "canary_before": before.get(canary) if canary else None,
        "canary_at_ready": at_ready.get(canary) if canary else None,
        "groups_before": {group: before.get(group) for group in args.groups},
        "groups_at_ready": {group: at_ready.get(group) for group in args.groups},
        "first_push_after_ready": fresh,
        "seconds_after_ready": {
            group: (value - ready if value is not None and ready is not None else None)
            for group, value in fresh.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    fresh = commands.add_parser("fresh")
    fresh.add_argument("--after", type=float, required=True)
    fresh.add_argument("--timeout", type=float, required=True)
    fresh.add_argument("groups", nargs="+", help="JOB=SERIAL")
    restart_parser = commands.add_parser("restart")
    restart_parser.add_argument("--down", type=float, required=True)
    restart_parser.add_argument("--timeout", type=float, required=True)
    restart_parser.add_argument("--service", default="prometheus-pushgateway")
    restart_parser.add_argument("--persistence-file", default="/var/lib/prometheus/pushgateway.data")
    restart_parser.add_argument("groups", nargs="+", help="JOB=SERIAL")
    args = parser.parse_args()
    if args.command == "fresh":
        report = {"first_push_after": wait_fresh(args.groups, args.after, args.timeout)}
    else:
        report = restart(args)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
