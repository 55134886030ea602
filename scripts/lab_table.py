#!/usr/bin/env python3
"""Prints the lab's devices as Prometheus sees them: serial, group, job, interval, seconds since the
last push (the recording rule the fleet dashboard reads). Exits 1 when an inventory device is missing
or has gone silent."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Dict, List, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from testkit.web import Endpoint  # noqa: E402

DEVICE_GROUPS = ("critical", "regular", "dev")


class DeviceRow(NamedTuple):
    serial: str
    host: str
    group: str
    job: str
    interval: float
    age: float


def inventory_groups(inventory: str) -> Dict[str, str]:
    """Maps each device host of the inventory to its device group."""
    command = [str(Path(sys.executable).parent / "ansible-inventory"), "-i", inventory, "--list"]
    listing = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return {host: group for group in DEVICE_GROUPS for host in listing.get(group, {}).get("hosts", [])}


def prometheus_query(prometheus: Endpoint, expr: str) -> list:
    body = prometheus.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    return json.loads(body)["data"]["result"]


def prometheus_rows(prometheus: Endpoint, hosts: Dict[str, str]) -> List[DeviceRow]:
    """Rows from what Prometheus scraped: each device's interval (with its hostname) and the
    recording rule job_device_serial:push_age:seconds that the fleet dashboard reads."""
    ages = {
        (s["metric"]["job"], s["metric"]["device_serial"]): float(s["value"][1])
        for s in prometheus_query(prometheus, "job_device_serial:push_age:seconds")
    }
    rows = []
    for series in prometheus_query(prometheus, "push_monitor_interval_seconds"):
        labels = series["metric"]
        age = ages.get((labels.get("job"), labels["device_serial"]), float("nan"))
        rows.append(device_row(labels, labels.get("hostname", "?"), hosts, float(series["value"][1]), age))
    return sort_rows(rows)


def device_row(labels: dict, host: str, hosts: Dict[str, str], interval: float, age: float) -> DeviceRow:
    return DeviceRow(
        serial=labels["device_serial"],
        host=host,
        group=hosts.get(host, "-"),
        job=labels.get("job", "?"),
        interval=interval,
        age=max(0.0, age),
    )


def sort_rows(rows: List[DeviceRow]) -> List[DeviceRow]:
    return sorted(rows, key=lambda row: (DEVICE_GROUPS.index(row.group) if row.group in DEVICE_GROUPS else 9, row.host))


def print_table(rows: List[DeviceRow]) -> None:
    header = ("device_serial", "host", "group", "job", "interval_s", "last_push_s_ago")
    lines = [header] + [(r.serial, r.host, r.group, r.job, f"{r.interval:g}", f"{r.age:.0f}") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


def problems(rows: List[DeviceRow], hosts: Dict[str, str], source: str) -> List[str]:
    seen = {row.host: row for row in rows}
    found = [f"{host} ({group}) is missing from {source}" for host, group in hosts.items() if host not in seen]
    # One push interval plus the gateway's whole-second clock: older means the device is silent.
    found += [f"{row.host} is silent for {row.age:.0f} s" for row in rows if row.age > 3 * row.interval + 2]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inventory", required=True)
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for every device to show up")
    parser.add_argument("--ca-file", help="CA certificate that signed the server's (https)")
    parser.add_argument("--username", help="basic auth user")
    parser.add_argument("--password-file", type=Path, help="file holding the basic auth password")
    args = parser.parse_args()
    password = args.password_file.read_text().strip() if args.password_file else None
    prometheus = Endpoint(args.prometheus, args.username, password, args.ca_file)
    hosts = inventory_groups(args.inventory)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            rows = prometheus_rows(prometheus, hosts)
        except OSError as err:
            print(f"lab: cannot read {args.prometheus}: {err}", file=sys.stderr)
            return 1
        issues = problems(rows, hosts, "Prometheus")
        # Right after a rollout Prometheus needs a scrape and a rule evaluation to see new devices.
        if not issues or time.monotonic() >= deadline:
            break
        time.sleep(1)
    print_table(rows)
    for issue in issues:
        print(f"lab: {issue}", file=sys.stderr)
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main())
