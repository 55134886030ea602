"""The Grafana dashboards, checked against a real Prometheus holding real pushed data: a real
Pushgateway and Prometheus (Debian's binaries, the roles' flags and rendered config) on loopback, and
three simulated devices running files/push_monitor.py. Grafana itself has no package source here;
every query it would send is sent to Prometheus instead."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from typing import Any, Dict, Iterator, List, Set, Tuple

import pytest
import yaml

from server_fixtures import FLEET_ALERTS, FleetServer, fleet_server, grafana_rate_interval, load_dashboards
from testkit import ROOT
from testkit.dashboard_queries import iter_targets, substitute
from testkit.process import wait_until
from testkit.server import COMMITTED_RENDER, Prometheus

DATASOURCE_UID = yaml.safe_load((ROOT / "roles" / "grafana" / "defaults" / "main.yml").read_text())[
    "grafana_datasource_uid"
]
# (serial, job, interval): one device per inventory group, shorter intervals to keep the test quick.
DEVICES = [
    ("e2e-critical-1", "critical-servers", 1.0),
    ("e2e-regular-1", "regular-servers", 2.0),
    ("e2e-dev-1", "dev-machines", 3.0),
]
SILENCED = DEVICES[0]
SILENT_TABLE_RECORD = "job_device_serial:silent_push_age:seconds"
STEP_SECONDS = 1
# The queries each dashboard must carry, exactly (docs/server.md lists them).
REQUIRED_QUERIES = {
    "device.json": {
        'total_cpu_usage_percent{device_serial="$device_serial"}',
        'app_cpu_usage_percent{device_serial="$device_serial"}',
        'total_memory_usage_percent{device_serial="$device_serial"}',
        'app_memory_usage_mb{device_serial="$device_serial"}',
    },
    "fleet.json": {
        "sum by (device_serial) (total_cpu_usage_percent)",
        "topk(1, app_cpu_usage_percent)",
        "avg by (device_serial) (total_memory_usage_percent)",
    },
}
DROPDOWN_QUERY = "label_values(app_cpu_usage_percent, device_serial)"
# Series the agent pushes only where the hardware reports them (no sensors in VMs and containers, no
# physical disk behind some). A query reading them must return data when the device pushed them,
# and when it did not, still be a valid query; the agent never makes such values up.
HARDWARE_METRICS = {
    "temperature_celsius",
    "disk_read_bytes_total",
    "disk_written_bytes_total",
    "disk_reads_completed_total",
    "disk_writes_completed_total",
}
OVERVIEW_TITLE = "Devices"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServer]:
    workdir = tmp_path_factory.mktemp("server-stack")
    overrides = {
        "prometheus_self_target": "127.0.0.1:9",
        # Rules every second so that the 3 x 1 s alert shows within the test's patience.
        "prometheus_evaluation_interval": "1s",
    }
    with fleet_server(workdir, DEVICES, overrides) as server:
        assert "--push.disable-consistency-check" in server.gateway.extra_args
        yield server


def dropdown_values(prometheus: Prometheus, dashboard: Dict[str, Any]) -> List[str]:
    """What Grafana's label_values(metric, label) variable query returns."""
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "device_serial")
    match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
    assert match, variable["query"]
    metric, label = match.groups()
    return sorted(prometheus.api(f"label/{label}/values", **{"match[]": metric}))


def panel_queries(dashboard: Dict[str, Any], variables: Dict[str, str]) -> Iterator[tuple]:
    for panel, target in iter_targets(dashboard):
        yield panel["title"], target.get("instant", False), substitute(target["expr"], variables)


def query_returns_data(prometheus: Prometheus, expr: str, instant: bool) -> bool:
    if instant:
        return len(prometheus.instant(expr)) > 0
    return any(series["values"] for series in prometheus.range(expr, 60, STEP_SECONDS))


def wait_for_every_query(prometheus: Prometheus, queries: List[tuple], timeout: float) -> List[str]:
    """Polls until every (title, instant, expr) returns data; returns the ones that never did."""
    pending = list(queries)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        pending = [q for q in pending if not query_returns_data(prometheus, q[2], q[1])]
        if pending:
            time.sleep(0.5)
    return [f"{title}: {expr}" for title, _, expr in pending]


def pushed_metric_names(stack: FleetServer) -> Dict[str, Set[str]]:
    """device_serial -> names of the metrics in its group at the gateway (what the agent sent)."""
    return {
        group["labels"]["device_serial"]: set(group) - {"labels", "last_push_successful"}
        for group in stack.gateway.groups()
    }


def split_by_hardware(queries: List[tuple], pushed: Set[str]) -> Tuple[List[tuple], List[tuple]]:
    """(queries that must return data, queries of hardware metrics no device here pushed)."""
    expected, absent = [], []
    for query in queries:
        used = {name for name in HARDWARE_METRICS if re.search(rf"\b{name}\b", query[2])}
        (absent if used and not used & pushed else expected).append(query)
    return expected, absent


def assert_valid_and_empty(prometheus: Prometheus, queries: List[tuple]) -> None:
    """Prometheus runs each query (a bad one is an error from the API) and finds no series."""
    for title, instant, expr in queries:
        assert not query_returns_data(prometheus, expr, instant), f"{title}: {expr} has data nobody pushed"


def rfc3339_timestamp(text: str) -> float:
    """Prometheus' activeAt (nanosecond fractions, Z) as a Unix time."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", text)
    assert match, text
    whole = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return whole.timestamp() + float(match.group(2) or 0)


def grafana_variables(stack: FleetServer, device_serial: str = "") -> Dict[str, str]:
    datasource = stack.render / "grafana" / "provisioning" / "datasources" / "fleet-monitor.yml"
    rate_interval = grafana_rate_interval(datasource, STEP_SECONDS)
    return {
        "device_serial": device_serial,
        "__rate_interval": rate_interval,
        "__interval": f"{STEP_SECONDS}s",
        "__range": "60s",
    }


# Static checks of the dashboard files.


@pytest.mark.parametrize("name", sorted(REQUIRED_QUERIES))
def test_dashboard_has_the_required_queries(name: str) -> None:
    dashboard = load_dashboards()[name]
    exprs = {target["expr"] for _, target in iter_targets(dashboard)}
    assert REQUIRED_QUERIES[name] <= exprs, REQUIRED_QUERIES[name] - exprs


def test_dashboards_use_the_provisioned_datasource_and_unique_ids() -> None:
    dashboards = load_dashboards()
    assert sorted(dashboards) == ["device.json", "fleet.json"]
    assert len({d["uid"] for d in dashboards.values()}) == len(dashboards)
    for name, dashboard in dashboards.items():
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel, target in iter_targets(dashboard):
            assert panel["datasource"]["uid"] == DATASOURCE_UID, f"{name}/{panel['title']}"
            assert target["datasource"]["uid"] == DATASOURCE_UID, f"{name}/{panel['title']}"
            assert target["expr"].strip(), f"{name}/{panel['title']}: empty query"
        for variable in dashboard["templating"]["list"]:
            assert variable["datasource"]["uid"] == DATASOURCE_UID


def test_device_dashboard_has_the_device_serial_dropdown() -> None:
    variables = load_dashboards()["device.json"]["templating"]["list"]
    assert [v["name"] for v in variables] == ["device_serial"]
    assert variables[0]["query"]["query"] == DROPDOWN_QUERY
    assert variables[0]["type"] == "query" and not variables[0]["includeAll"]
    titles = {panel["title"] for panel in load_dashboards()["device.json"]["panels"]}
    assert {"Network rates", "Seconds since last push"} <= titles


def test_fleet_dashboard_reads_recording_rules_that_exist() -> None:
    recorded = {
        rule["record"]
        for group in yaml.safe_load((COMMITTED_RENDER / "prometheus" / "rules" / "fleet-recording.yml").read_text())[
            "groups"
        ]
        for rule in group["rules"]
    }
    used = {
        name
        for _, target in iter_targets(load_dashboards()["fleet.json"])
        for name in re.findall(r"[a-z_]+:[a-z_:]+", target["expr"])
    }
    assert used and used <= recorded, used - recorded


# Every query against real data.


@pytest.mark.integration
def test_dropdown_lists_exactly_the_pushing_devices(stack: FleetServer) -> None:
    dashboard = load_dashboards()["device.json"]
    expected = sorted(serial for serial, _, _ in DEVICES)
    wait_until(lambda: dropdown_values(stack.prometheus, dashboard) == expected, 30, 0.5, message="all serials")
    assert dropdown_values(stack.prometheus, dashboard) == expected


@pytest.mark.integration
def test_every_device_panel_query_returns_data_for_every_device(stack: FleetServer) -> None:
    dashboard = load_dashboards()["device.json"]
    queries = [
        (f"{serial} / {title}", instant, expr)
        for serial, _, _ in DEVICES
        for title, instant, expr in panel_queries(dashboard, grafana_variables(stack, serial))
    ]
    assert len(queries) == len(DEVICES) * len(list(iter_targets(dashboard)))
    live, _ = split_by_hardware(queries, set())
    missing = wait_for_every_query(stack.prometheus, live, 45)
    assert not missing, "queries without data:\n" + "\n".join(missing)
    pushed = pushed_metric_names(stack)
    for serial, _, _ in DEVICES:
        mine = [q for q in queries if q[0].startswith(f"{serial} / ")]
        expected, absent = split_by_hardware(mine, pushed[serial])
        missing = wait_for_every_query(stack.prometheus, expected, 30)
        assert not missing, "queries without data:\n" + "\n".join(missing)
        assert_valid_and_empty(stack.prometheus, absent)


@pytest.mark.integration
def test_device_queries_are_scoped_to_the_selected_device(stack: FleetServer) -> None:
    serial = DEVICES[1][0]
    expr = substitute('total_cpu_usage_percent{device_serial="$device_serial"}', grafana_variables(stack, serial))
    wait_until(lambda: stack.prometheus.instant(expr), 30, 0.5, message=expr)
    result = stack.prometheus.instant(expr)
    assert {series["metric"]["device_serial"] for series in result} == {serial}
    assert result[0]["metric"]["job"] == DEVICES[1][1], "honor_labels must keep the device's job"


@pytest.mark.integration
def test_every_fleet_panel_query_returns_data_and_nobody_is_silent(stack: FleetServer) -> None:
    dashboard = load_dashboards()["fleet.json"]
    queries = list(panel_queries(dashboard, grafana_variables(stack)))
    live = [q for q in queries if SILENT_TABLE_RECORD not in q[2]]
    assert len(live) == len(queries) - 1
    always, _ = split_by_hardware(live, set())
    missing = wait_for_every_query(stack.prometheus, always, 45)
    assert not missing, "queries without data:\n" + "\n".join(missing)
    expected, absent = split_by_hardware(live, set().union(*pushed_metric_names(stack).values()))
    missing = wait_for_every_query(stack.prometheus, expected, 30)
    assert not missing, "queries without data:\n" + "\n".join(missing)
    assert_valid_and_empty(stack.prometheus, absent)
    counts = {s["metric"]["job"]: float(s["value"][1]) for s in stack.prometheus.instant("job:devices:count")}
    assert counts == {job: 1.0 for _, job, _ in DEVICES}
    assert stack.prometheus.instant(SILENT_TABLE_RECORD) == []
    assert stack.prometheus.instant('ALERTS{alertname="DeviceSilent"}') == []


@pytest.mark.integration
def test_fleet_overview_has_one_row_per_device_with_its_health(stack: FleetServer) -> None:
    """The overview table merges its queries on (job, device_serial), as Grafana's merge does:
    every device is one row, and each column that is not hardware-dependent is filled."""
    [table] = [p for p in load_dashboards()["fleet.json"]["panels"] if p["title"] == OVERVIEW_TITLE]
    assert table["type"] == "table" and [t["id"] for t in table["transformations"]] == ["merge", "organize"]
    links = [o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == "device_serial"]
    assert "/d/fleet-device/" in json.dumps(links) and "var-device_serial=${__value.raw}" in json.dumps(links)
    expected = {(job, serial) for serial, job, _ in DEVICES}
    pushed = set().union(*pushed_metric_names(stack).values())

    def rows() -> Dict[Tuple[str, str], Dict[str, str]]:
        merged: Dict[Tuple[str, str], Dict[str, str]] = {}
        for target in table["targets"]:
            assert target["instant"] and target["format"] == "table"
            for series in stack.prometheus.instant(target["expr"]):
                key = (series["metric"]["job"], series["metric"]["device_serial"])
                merged.setdefault(key, {})[target["refId"]] = series["metric"].get("version", series["value"][1])
        return merged

    hardware = {t["refId"] for t in table["targets"] if split_by_hardware([("", True, t["expr"])], pushed)[1]}
    columns = {t["refId"] for t in table["targets"]} - hardware
    wait_until(lambda: all(columns <= set(row) for row in rows().values()) and set(rows()) == expected, 45, 0.5,
               message="a full row per device")  # fmt: skip
    table_rows = rows()
    assert set(table_rows) == expected
    versions = {row["F"] for row in table_rows.values()}
    assert len(versions) == 1 and re.fullmatch(r"\d+\.\d+\.\d+", versions.pop())


@pytest.mark.integration
def test_every_rule_loads(stack: FleetServer) -> None:
    groups = stack.prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["name"] for rule in rules if rule["type"] == "alerting"} == FLEET_ALERTS
    wait_until(
        lambda: all(r["health"] == "ok" for g in stack.prometheus.api("rules")["groups"] for r in g["rules"]),
        15,
        0.5,
        message="every rule evaluated with health ok",
    )


@pytest.mark.integration
def test_stopped_device_fires_device_silent_and_fills_the_silent_table(stack: FleetServer) -> None:
    """Runs last in this module: it stops the critical device's agent."""
    serial, job, interval = SILENCED
    # Everyone was live before: the alert below is caused by the stop.
    wait_until(
        lambda: len(stack.prometheus.instant("job_device_serial:push_age:seconds")) == len(DEVICES),
        30,
        0.5,
        message="push ages for all devices",
    )
    assert stack.prometheus.instant('ALERTS{alertname="DeviceSilent"}') == []
    next(agent for agent in stack.agents if agent.serial == serial).stop()
    last_push = stack.gateway.push_time(job, serial)
    assert last_push is not None

    def firing() -> List[Dict[str, Any]]:
        return stack.prometheus.instant('ALERTS{alertname="DeviceSilent",alertstate="firing"}')

    wait_until(firing, 30, 0.5, message="DeviceSilent firing")
    alerts = firing()
    assert [(a["metric"]["device_serial"], a["metric"]["job"]) for a in alerts] == [(serial, job)]
    active = stack.prometheus.api("alerts")["alerts"]
    [silent_alert] = [a for a in active if a["labels"]["alertname"] == "DeviceSilent"]
    active_at = rfc3339_timestamp(silent_alert["activeAt"])
    assert active_at - last_push > 3 * interval, "fired before 3 x the device's own interval had passed"
    # The fleet dashboard: every panel, the silent devices table included, now has data.
    dashboard = load_dashboards()["fleet.json"]
    pushed = set().union(*pushed_metric_names(stack).values())
    expected, absent = split_by_hardware(list(panel_queries(dashboard, grafana_variables(stack))), pushed)
    missing = wait_for_every_query(stack.prometheus, expected, 30)
    assert not missing, "queries without data:\n" + "\n".join(missing)
    assert_valid_and_empty(stack.prometheus, absent)
    silent = stack.prometheus.instant(SILENT_TABLE_RECORD)
    assert [s["metric"]["device_serial"] for s in silent] == [serial]
    # A silent device's last values stay at the gateway: its device dashboard still answers.
    device_dashboard = load_dashboards()["device.json"]
    queries, absent = split_by_hardware(
        list(panel_queries(device_dashboard, grafana_variables(stack, serial))), pushed_metric_names(stack)[serial]
    )
    assert_valid_and_empty(stack.prometheus, absent)
    missing = wait_for_every_query(stack.prometheus, queries, 10)
    assert not missing, "queries without data:\n" + "\n".join(missing)
