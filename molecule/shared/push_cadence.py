#!/usr/bin/env python3
"""Watches a Pushgateway for a while and reports, per device group, the distinct push times seen.

Runs inside the gateway container (stdlib only). Usage:
  push_cadence.py --gateway URL --seconds S --poll P JOB=SERIAL...
Prints JSON: {"JOB=SERIAL": {"pushes": n, "mean_interval": seconds or null}, ...}
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from typing import Dict, List, Optional


def push_times(gateway: str) -> Dict[str, float]:
    with urllib.request.urlopen(gateway.rstrip("/") + "/api/v1/metrics", timeout=5) as response:
        groups = json.load(response)["data"]
    times = {}
    for group in groups:
        labels = group.get("labels", {})
        metrics = group.get("push_time_seconds", {}).get("metrics", [])
        if "device_serial" in labels and metrics:
            times[f"{labels.get('job')}={labels['device_serial']}"] = float(metrics[0]["value"])
    return times


def mean_interval(times: List[float]) -> Optional[float]:
    if len(times) < 2:
        return None
    return (times[-1] - times[0]) / (len(times) - 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("groups", nargs="+", help="JOB=SERIAL")
    args = parser.parse_args()
    seen: Dict[str, List[float]] = {group: [] for group in args.groups}
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        current = push_times(args.gateway)
        for group, pushes in seen.items():
            value = current.get(group)
            if value is not None and (not pushes or value != pushes[-1]):
                pushes.append(value)
        time.sleep(args.poll)
    # The first value seen is a push from before the window: intervals are measured between
    # pushes observed while watching, so it only anchors the first interval.
    report = {group: {"pushes": len(p) - 1, "mean_interval": mean_interval(p)} for group, p in seen.items()}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
