"""Faults: Prometheus restarted, no config or data lost.

A real Prometheus runs with the prometheus role's rendered flags, config and rules and its own TSDB
directory, scraping a real Pushgateway that two real agents (files/push_monitor.py, 1 s interval) push
to. The test records the running config, flags and loaded rules and every raw sample Prometheus holds,
stops it, starts it again on the same data directory and port, and compares.

What Prometheus 2.42 guarantees, and so what is asserted:
- SIGTERM (systemd's stop): a clean shutdown, exit code 0. Every sample it held is still there after
  the restart, with the same timestamp and value.
- SIGKILL (a crash): every sample that was queryable before the kill is still there too. A scrape or
  rule evaluation only becomes queryable when its append is committed, and the commit first writes the
  samples to the write-ahead log (write(2) on the open segment, before the in-memory head is updated).
  A killed process loses nothing the kernel already has, so the restart's WAL replay rebuilds the head.
  Only an OS crash or power loss can lose the newest, not yet fsynced part of the WAL segment; that is
  not tested here. Persisted blocks (cut every 2 h) are immutable files and not at risk either; this
  test runs for well under 2 h, so all of its data lives in the head and comes back through the WAL.
- Neither case keeps anything for the time Prometheus is down: there are no samples in that gap, and
  scraping resumes after the restart.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from server_fixtures import FleetServer, Samples, fleet_server, raw_samples
from testkit.process import free_port, wait_until
from testkit.server import Prometheus

pytestmark = pytest.mark.integration

DEVICES = [("restart-critical-1", "critical-servers"), ("restart-regular-1", "regular-servers")]
INTERVAL = 1.0
RECORDED = "job:devices:count"
# The machine is shared and busy: generous, bounded waits; nothing here asserts on timing.
DATA_TIMEOUT = 120
STOP_TIMEOUT = 120
# Rule state that changes with every evaluation; everything else about a loaded rule must survive.
RULE_KEYS = ("name", "type", "query", "duration", "labels", "annotations")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FleetServer]:
    """Function scope: every variant gets a fresh TSDB."""
    port = free_port()
    devices = [(serial, job, INTERVAL) for serial, job in DEVICES]
    with fleet_server(tmp_path, devices, {"prometheus_self_target": f"127.0.0.1:{port}"}, port) as fleet:
        yield fleet


def running_state(prometheus: Prometheus) -> Dict[str, Any]:
    """The config and flags Prometheus runs with and the rules it has loaded, without evaluation state."""
    groups = [
        {
            "name": group["name"],
            "file": group["file"],
            "interval": group["interval"],
            "rules": [{key: rule.get(key) for key in RULE_KEYS} for rule in group["rules"]],
        }
        for group in prometheus.api("rules")["groups"]
    ]
    return {
        "config": prometheus.api("status/config")["yaml"],
        "flags": prometheus.api("status/flags"),
        "rules": groups,
    }


def sample_counts(prometheus: Prometheus, expr: str, label: str) -> Dict[str, float]:
    return {s["metric"][label]: float(s["value"][1]) for s in prometheus.instant(f"count_over_time({expr}[5m])")}


def wait_for_history(prometheus: Prometheus) -> None:
    """Enough history to lose: at least 10 scrapes of every device and 2 evaluations of the rules."""

    def enough() -> bool:
        pushes = sample_counts(prometheus, "push_time_seconds", "device_serial")
        evaluations = sample_counts(prometheus, RECORDED, "job")
        return all(pushes.get(serial, 0) >= 10 for serial, _ in DEVICES) and all(
            evaluations.get(job, 0) >= 2 for _, job in DEVICES
        )

    wait_until(enough, DATA_TIMEOUT, 0.5, message="10 scrapes of every device and 2 rule evaluations")


def stable_samples(prometheus: Prometheus, expr: str, at: float) -> Samples:
    """Samples up to `at`, read until two reads agree: appends stamped before `at` may still be committing."""
    previous = raw_samples(prometheus, expr, at)
    deadline = time.monotonic() + DATA_TIMEOUT
    while time.monotonic() < deadline:
        time.sleep(1)
        current = raw_samples(prometheus, expr, at)
        if current == previous:
            return current
        previous = current
    raise AssertionError(f"samples up to {at} kept changing for {DATA_TIMEOUT} s")


def stop(prometheus: Prometheus, sig: signal.Signals) -> int:
    """Sends sig and waits for the exit (no SIGKILL fallback: a clean shutdown must finish by itself)."""
    process = prometheus.process
    assert process is not None and process.poll() is None
    process.send_signal(sig)
    code = process.wait(STOP_TIMEOUT)
    prometheus.process = None
    return code


def describe_loss(before: Samples, after: Samples) -> str:
    lost = [dict(labels) for labels in before if labels not in after]
    changed = [
        (dict(labels), sorted(set(values) ^ set(after[labels])))
        for labels, values in before.items()
        if labels in after and after[labels] != values
    ]
    return f"{len(lost)} of {len(before)} series lost: {lost[:3]}; {len(changed)} changed: {changed[:2]}"


def latest_timestamps(prometheus: Prometheus, expr: str, label: str) -> Dict[str, float]:
    return {s["metric"][label]: float(s["value"][1]) for s in prometheus.instant(f"timestamp({expr})")}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm-clean-stop", "sigkill-crash"])
def test_restart_keeps_config_rules_and_every_sample(server: FleetServer, sig: signal.Signals) -> None:
    prometheus = server.prometheus
    wait_for_history(prometheus)
    before_state = running_state(prometheus)
    assert {rule["name"] for group in before_state["rules"] for rule in group["rules"]} >= {RECORDED, "DeviceSilent"}
    at = time.time()
    # Everything since Prometheus started: the fleet's series, the rules' outputs, its own metrics.
    window = f'{{__name__=~".+"}}[{math.ceil(at - server.started) + 60}s]'
    before = stable_samples(prometheus, window, at)
    names = {dict(labels)["__name__"] for labels in before}
    serials = {dict(labels).get("device_serial") for labels in before}
    assert {"push_time_seconds", "total_cpu_usage_percent", RECORDED, "up"} <= names
    assert {serial for serial, _ in DEVICES} <= serials
    assert sum(len(values) for values in before.values()) > 500

    code = stop(prometheus, sig)
    if sig == signal.SIGTERM:
        assert code == 0, f"no clean shutdown (exit {code}):\n{prometheus.log.read_text()[-3000:]}"
    else:
        assert code == -signal.SIGKILL
    restarted = time.time()
    prometheus.start()

    assert running_state(prometheus) == before_state
    after = raw_samples(prometheus, window, at)
    if after != before:
        raise AssertionError(describe_loss(before, after))

    # And it carries on: new scrapes of every device and new rule evaluations, stamped after the restart.
    def resumed() -> bool:
        pushes = latest_timestamps(prometheus, "push_time_seconds", "device_serial")
        evaluations = latest_timestamps(prometheus, RECORDED, "job")
        return all(pushes.get(serial, 0) > restarted for serial, _ in DEVICES) and all(
            evaluations.get(job, 0) > restarted for _, job in DEVICES
        )

    wait_until(resumed, DATA_TIMEOUT, 0.5, message="scrapes and rule evaluations after the restart")
    wait_until(
        lambda: all(r["health"] == "ok" for g in prometheus.api("rules")["groups"] for r in g["rules"]),
        DATA_TIMEOUT,
        0.5,
        message="every rule evaluated with health ok after the restart",
    )
