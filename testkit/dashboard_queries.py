#!/usr/bin/env python3
"""Sends every query of the installed Grafana dashboards to Prometheus, as Grafana would, and prints
JSON: the device_serial dropdown's values and the queries that returned no data.

The home of Grafana's query logic (variable substitution, $__rate_interval, the panels' targets):
tests/test_dashboards.py imports it, and molecule/default/verify.yml runs it on the monitoring server
(ansible.builtin.script: one stdlib-only file, so it builds its own requests).
Grafana variables: $device_serial is set to each serial in turn, $__rate_interval / $__interval as
Grafana computes them for a 1 s step.
With --datasource (Grafana's provisioned datasource entry as JSON) it reaches Prometheus the way
Grafana does: that URL, that basic auth login, that CA certificate.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import ssl
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

STEP_SECONDS = 1
RANGE_SECONDS = 60


class Datasource:
    """Prometheus as a Grafana datasource entry describes it (url, basicAuth, tlsCACert)."""

    def __init__(self, url: str, entry: Optional[Dict[str, Any]] = None) -> None:
        entry = entry or {}
        secure = entry.get("secureJsonData", {})
        self.url = entry.get("url", url).rstrip("/")
        self.headers = {}
        if entry.get("basicAuth"):
            login = f"{entry['basicAuthUser']}:{secure['basicAuthPassword']}"
            self.headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
        ca = secure.get("tlsCACert") if entry.get("jsonData", {}).get("tlsAuthWithCACert") else None
        self.context = ssl.create_default_context(cadata=ca) if self.url.startswith("https") else None

    def api(self, path: str, params: Dict[str, Any]) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
        request = urllib.request.Request(url, headers=self.headers)
        with urllib.request.urlopen(request, timeout=10, context=self.context) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"{url}: {body}")
        return body["data"]


def has_data(prometheus: Datasource, expr: str, instant: bool) -> bool:
    if instant:
        return bool(prometheus.api("query", {"query": expr})["result"])
    end = time.time()
    params = {"query": expr, "start": end - RANGE_SECONDS, "end": end, "step": STEP_SECONDS}
    return any(series["values"] for series in prometheus.api("query_range", params)["result"])


def iter_targets(dashboard: Dict[str, Any]) -> Iterator[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """(panel, target) for every query target of every panel, rows included."""
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner, target


def substitute(expr: str, variables: Dict[str, str]) -> str:
    """Grafana's variable syntax ($name and ${name}) replaced by values; an unknown variable is a ValueError."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise ValueError(f"dashboard query {expr!r} uses unknown variable ${name}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def rate_interval(step_seconds: float, scrape_seconds: int) -> str:
    """Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval)."""
    return f"{int(max(step_seconds + scrape_seconds, 4 * scrape_seconds))}s"


def dropdown(prometheus: Datasource, dashboards: List[Dict[str, Any]]) -> List[str]:
    for dashboard in dashboards:
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable["name"] == "device_serial":
                match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
                if not match:
                    raise SystemExit(f"unexpected variable query {variable['query']!r}")
                metric, label = match.groups()
                return sorted(prometheus.api(f"label/{label}/values", {"match[]": metric}))
    raise SystemExit("no dashboard defines the device_serial variable")


def hardware_pushed(prometheus: Datasource, expr: str, serial: str, hardware_metrics: List[str]) -> bool:
    """False when expr reads a hardware-dependent metric that no device (or not this serial) pushed."""
    used = [name for name in hardware_metrics if re.search(rf"\b{re.escape(name)}\b", expr)]
    selector = f'{{device_serial="{serial}"}}' if serial else ""
    return not used or any(prometheus.api("query", {"query": f"count({name}{selector})"})["result"] for name in used)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--datasource", type=Path, help="Grafana's datasource entry as JSON (wins over --prometheus)")
    parser.add_argument("--dashboards", type=Path, required=True, help="directory of the dashboard JSON files")
    parser.add_argument("--serial", action="append", default=[], help="a device serial (repeat)")
    parser.add_argument("--scrape-interval-seconds", type=int, default=1, help="the datasource's timeInterval")
    parser.add_argument("--skip", action="append", default=[], help="skip queries containing this text")
    parser.add_argument(
        "--hardware-metric",
        action="append",
        default=[],
        help="a metric only some hardware has (repeat): its queries must return data when a device pushed it",
    )
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()

    entry = json.loads(args.datasource.read_text()) if args.datasource else None
    prometheus = Datasource(args.prometheus, entry)
    dashboards = [json.loads(path.read_text()) for path in sorted(args.dashboards.glob("*.json"))]
    scrape = args.scrape_interval_seconds
    base = {
        "__interval": f"{STEP_SECONDS}s",
        "__rate_interval": rate_interval(STEP_SECONDS, scrape),
        "__range": f"{RANGE_SECONDS}s",
    }
    queries: List[Tuple[str, bool, str, str]] = []
    for dashboard in dashboards:
        uses_device = "$device_serial" in json.dumps(dashboard)
        for serial in args.serial if uses_device else [""]:
            variables = {**base, "device_serial": serial}
            for panel, target in iter_targets(dashboard):
                try:
                    expr = substitute(target["expr"], variables)
                except ValueError as err:
                    raise SystemExit(str(err)) from err
                if not any(text in expr for text in args.skip):
                    label = f"{dashboard['title']} / {panel['title']}" + (f" / {serial}" if serial else "")
                    queries.append((label, bool(target.get("instant")), expr, serial))

    absent = [q for q in queries if not hardware_pushed(prometheus, q[2], q[3], args.hardware_metric)]
    pending = [q[:3] for q in queries if q not in absent]
    deadline = time.monotonic() + args.timeout
    while pending and time.monotonic() < deadline:
        pending = [q for q in pending if not has_data(prometheus, q[2], q[1])]
        if pending:
            time.sleep(1)
    json.dump(
        {
            "dropdown": dropdown(prometheus, dashboards),
            "checked": len(queries),
            "missing": [f"{label}: {expr}" for label, _, expr in pending],
            # Queries of hardware no device here has (sensors in containers): valid, and empty.
            "absent_hardware": [f"{label}: {expr}" for label, instant, expr, _ in absent],
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
