"""Past one server: Prometheus forwards the fleet to a distributed store with remote_write.

The store is a second real Prometheus started with --web.enable-remote-write-receiver and no scrape
configs of its own, so every series it holds arrived through remote_write. The first Prometheus runs
with the prometheus role's rendered config (prometheus_remote_write and prometheus_external_labels set)
and rules, scraping a real Pushgateway fed by three real agents (files/push_monitor.py, 1 s interval).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Set, Tuple

import pytest
import yaml

from server_fixtures import Samples, fleet_server, raw_samples
from testkit.process import free_port, wait_until
from testkit.server import Prometheus

pytestmark = pytest.mark.integration

# (serial, job): distinct serials over two inventory groups.
DEVICES = [
    ("rw-critical-1", "critical-servers"),
    ("rw-critical-2", "critical-servers"),
    ("rw-regular-1", "regular-servers"),
]
INTERVAL = 1.0
EXTERNAL_LABELS = {"cluster": "fleet-test", "replica": "a"}
# The agent's core series; the test also compares the full set the sender holds.
AGENT_METRICS = {
    "push_monitor_info",
    "push_monitor_interval_seconds",
    "total_cpu_usage_percent",
    "total_memory_usage_percent",
    "app_cpu_usage_percent",
    "app_memory_usage_mb",
    "network_receive_bytes_total",
    "push_time_seconds",
}
RECORDED = {"job_device_serial:push_age:seconds", "job:devices:count"}
EVERYTHING = '{__name__=~".+"}'
WINDOW = EVERYTHING + "[30s]"
# Remote write batches for up to 5 s by default and the machine is shared: generous, bounded waits.
ARRIVAL_TIMEOUT = 120


class RemoteWriteStack:
    def __init__(self, sender: Prometheus, receiver: Prometheus, receiver_before: List[Any], config: Dict) -> None:
        self.sender = sender
        self.receiver = receiver
        self.receiver_before = receiver_before
        self.config = config


def start_receiver(workdir: Path) -> Prometheus:
    """A bare Prometheus that only accepts remote writes: it scrapes nothing, not even itself."""
    workdir.mkdir()
    config = workdir / "receiver.yml"
    config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
    receiver = Prometheus(workdir, config, ["--web.enable-remote-write-receiver"])
    receiver.start()
    return receiver


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteWriteStack]:
    workdir = tmp_path_factory.mktemp("remote-write")
    receiver = start_receiver(workdir / "receiver")
    try:
        # Taken before anything can write to it: the receiver's own baseline.
        receiver_before = receiver.instant(EVERYTHING)
        sender_port = free_port()
        overrides = {
            "prometheus_self_target": f"127.0.0.1:{sender_port}",
            "prometheus_external_labels": EXTERNAL_LABELS,
            "prometheus_remote_write": [{"name": "receiver", "url": f"{receiver.url}/api/v1/write"}],
        }
        devices = [(serial, job, INTERVAL) for serial, job in DEVICES]
        with fleet_server(workdir, devices, overrides, sender_port) as fleet:
            config = yaml.safe_load((fleet.render / "prometheus" / "prometheus.yml").read_text())
            yield RemoteWriteStack(fleet.prometheus, receiver, receiver_before, config)
    finally:
        receiver.stop()


def name_serial_pairs(prometheus: Prometheus) -> Set[Tuple[str, str]]:
    """(metric name, device_serial) of every device series Prometheus holds now."""
    result = prometheus.instant('count by (__name__, device_serial) ({device_serial!=""})')
    return {(s["metric"]["__name__"], s["metric"]["device_serial"]) for s in result}


def with_external_labels(samples: Samples) -> Samples:
    """The sender's series as the store must see them: external labels are added on the way out."""
    return {tuple(sorted({**dict(labels), **EXTERNAL_LABELS}.items())): values for labels, values in samples.items()}


def describe_difference(expected: Samples, actual: Samples) -> str:
    missing = [dict(labels) for labels in expected if labels not in actual]
    unexpected = [dict(labels) for labels in actual if labels not in expected]
    differing = [dict(labels) for labels in expected if labels in actual and actual[labels] != expected[labels]]
    return (
        f"{len(expected)} series expected, {len(actual)} at the receiver; missing {len(missing)}: {missing[:3]}; "
        f"unexpected {len(unexpected)}: {unexpected[:3]}; with other samples {len(differing)}: {differing[:3]}"
    )


def test_rendered_config_remote_writes_to_the_receiver(stack: RemoteWriteStack) -> None:
    assert stack.config["remote_write"] == [{"name": "receiver", "url": f"{stack.receiver.url}/api/v1/write"}]
    assert stack.config["global"]["external_labels"] == EXTERNAL_LABELS
    # The running config is the rendered one.
    running = yaml.safe_load(stack.sender.api("status/config")["yaml"])
    assert [entry["url"] for entry in running["remote_write"]] == [f"{stack.receiver.url}/api/v1/write"]


def test_every_device_series_arrives_at_the_receiver(stack: RemoteWriteStack) -> None:
    serials = {serial for serial, _ in DEVICES}

    def sender_complete() -> bool:
        pairs = name_serial_pairs(stack.sender)
        return {(name, serial) for name in AGENT_METRICS for serial in serials} <= pairs

    wait_until(sender_complete, ARRIVAL_TIMEOUT, 0.5, message="the agents' series at the sender")
    expected = name_serial_pairs(stack.sender)
    assert {serial for _, serial in expected} == serials
    try:
        wait_until(lambda: expected <= name_serial_pairs(stack.receiver), ARRIVAL_TIMEOUT, 0.5)
    except AssertionError:
        missing = sorted(expected - name_serial_pairs(stack.receiver))
        raise AssertionError(f"(metric, device_serial) never at the receiver: {missing}") from None
    jobs = stack.receiver.instant('group by (device_serial, job) (push_monitor_info{cluster="fleet-test"})')
    assert sorted((s["metric"]["device_serial"], s["metric"]["job"]) for s in jobs) == sorted(DEVICES)


def test_recording_rule_outputs_arrive_at_the_receiver(stack: RemoteWriteStack) -> None:
    loaded = {rule["name"] for group in stack.sender.api("rules")["groups"] for rule in group["rules"]}
    assert loaded >= RECORDED, "the role's recording rules are not loaded"
    expected_counts = {}
    for _, job in DEVICES:
        expected_counts[job] = expected_counts.get(job, 0) + 1

    def counts() -> Dict[str, float]:
        return {s["metric"]["job"]: float(s["value"][1]) for s in stack.receiver.instant("job:devices:count")}

    try:
        wait_until(lambda: counts() == expected_counts, ARRIVAL_TIMEOUT, 0.5)
    except AssertionError:
        raise AssertionError(f"job:devices:count at the receiver: {counts()}, expected {expected_counts}") from None

    def push_age_serials() -> Set[str]:
        return {s["metric"]["device_serial"] for s in stack.receiver.instant("job_device_serial:push_age:seconds")}

    wait_until(
        lambda: push_age_serials() == {serial for serial, _ in DEVICES},
        ARRIVAL_TIMEOUT,
        0.5,
        message="job_device_serial:push_age:seconds for every device",
    )


def test_samples_arrive_unchanged_with_the_external_labels(stack: RemoteWriteStack) -> None:
    """Every raw sample the sender holds in a 30 s window, every series included (the fleet's, the
    rules', the sender's own), reaches the store with the same timestamp and value."""
    wait_until(
        lambda: stack.sender.instant('job_device_serial:push_age:seconds{device_serial!=""}'),
        ARRIVAL_TIMEOUT,
        0.5,
        message="rules evaluated at the sender",
    )
    at = time.time()
    # Both sides are read again on every poll: a scrape or rule evaluation stamped before `at` may still be
    # committing at the sender when it is first read.
    latest: Dict[str, Samples] = {}

    def arrived() -> bool:
        latest["sender"] = with_external_labels(raw_samples(stack.sender, WINDOW, at))
        latest["receiver"] = raw_samples(stack.receiver, WINDOW, at)
        return latest["sender"] == latest["receiver"]

    try:
        wait_until(arrived, ARRIVAL_TIMEOUT, 1.0, message="the sender's samples at the receiver")
    except AssertionError:
        raise AssertionError(describe_difference(latest["sender"], latest["receiver"])) from None
    expected = latest["sender"]
    names = {dict(labels)["__name__"] for labels in expected}
    assert names >= AGENT_METRICS | RECORDED, sorted((AGENT_METRICS | RECORDED) - names)
    serials = {dict(labels).get("device_serial") for labels in expected}
    assert {serial for serial, _ in DEVICES} <= serials
    assert sum(len(values) for values in expected.values()) > 100


def test_the_receiver_holds_only_what_was_remote_written(stack: RemoteWriteStack) -> None:
    """The control: the receiver started empty and scrapes nothing, so without remote_write the tests
    above could not pass; everything it holds carries the sender's external labels, which the sender
    adds only on the way out (its own series do not have them)."""
    assert stack.receiver_before == []
    wait_until(lambda: stack.receiver.instant(EVERYTHING), ARRIVAL_TIMEOUT, 0.5, message="any series at the receiver")
    unlabelled = stack.receiver.instant('{__name__=~".+", cluster!="fleet-test"}')
    assert unlabelled == []
    assert stack.sender.instant('{__name__=~".+", cluster="fleet-test"}') == []
    assert stack.receiver.api("targets")["activeTargets"] == []
