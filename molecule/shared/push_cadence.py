#!/usr/bin/env python3
"""Watches a Pushgateway and reports, per device group, the intervals between the pushes it saw,
measured on the agent's own clock (push_monitor_collection_timestamp_seconds).

Runs inside the gateway container (stdlib only). Usage:
  push_cadence.py --gateway URL --seconds S [--wait-for JOB=SERIAL --intervals N --timeout T] JOB=SERIAL...
Watches for at least S seconds and, beyond that, until every --wait-for group has shown N intervals
(at most T seconds in all). Prints JSON:
  {"JOB=SERIAL": {"pushes": n, "intervals": [...], "median_interval": seconds or null}, ...,
   "watched_seconds": s, "failed_polls": n}

The gateway keeps only the last push of a group, so a poll that comes late (a loaded host) misses
pushes: the interval across a missed push is a multiple of the agent's, and the median of the
intervals stays the agent's while most pushes are seen. The collection times are the agent's own,
so neither the network nor this poller's delays shift them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from typing import Dict, List, Optional

COLLECTION_METRIC = "push_monitor_collection_timestamp_seconds"


def collection_times(gateway: str) -> Dict[str, float]:
    """JOB=SERIAL -> the collection time of the group's last push."""
    with urllib.request.urlopen(gateway.rstrip("/") + "/api/v1/metrics", timeout=5) as response:
        groups = json.load(response)["data"]
    times = {}
    for group in groups:
        labels = group.get("labels", {})
        metrics = group.get(COLLECTION_METRIC, {}).get("metrics", [])
        if "device_serial" in labels and metrics:
            times[f"{labels.get('job')}={labels['device_serial']}"] = float(metrics[0]["value"])
    return times


def intervals(times: List[float]) -> List[float]:
    return [round(later - earlier, 3) for earlier, later in zip(times, times[1:])]


def median_interval(times: List[float]) -> Optional[float]:
    return statistics.median(intervals(times)) if len(times) >= 2 else None


def watching(seen: Dict[str, List[float]], args: argparse.Namespace, elapsed: float) -> bool:
    if elapsed < args.seconds:
        return True
    short = [group for group in args.wait_for if len(seen[group]) - 1 < args.intervals]
    return bool(short) and elapsed < args.timeout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--seconds", type=float, required=True, help="watch at least this long")
    parser.add_argument("--wait-for", action="append", default=[], metavar="JOB=SERIAL")
    parser.add_argument("--intervals", type=int, default=4, help="intervals each --wait-for group must show")
    parser.add_argument("--timeout", type=float, default=60, help="watch at most this long")
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("groups", nargs="+", help="JOB=SERIAL")
    args = parser.parse_args()
    seen: Dict[str, List[float]] = {group: [] for group in [*args.groups, *args.wait_for]}
    failed_polls = 0
    started = time.monotonic()
    while watching(seen, args, time.monotonic() - started):
        try:
            current = collection_times(args.gateway)
        except (OSError, ValueError):
            # A slow or refused read loses this poll only; the intervals show what it missed.
            failed_polls += 1
            current = {}
        for group, pushes in seen.items():
            value = current.get(group)
            if value is not None and (not pushes or value != pushes[-1]):
                pushes.append(value)
        time.sleep(args.poll)
    # The first value seen is a push from before the watch: it only anchors the first interval.
    report: Dict[str, object] = {
        group: {"pushes": max(0, len(p) - 1), "intervals": intervals(p), "median_interval": median_interval(p)}
        for group, p in seen.items()
    }
    report["watched_seconds"] = round(time.monotonic() - started, 1)
    report["failed_polls"] = failed_polls
    print(json.dumps(report))


if __name__ == "__main__":
    main()
