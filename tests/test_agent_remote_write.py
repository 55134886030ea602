"""The agent's remote-write transport against real receivers: Prometheus 2.42 configured by the
prometheus role (receiver on, out-of-order window, its rules), Debian's VictoriaMetrics, and a loopback
receiver that records requests and answers as told. Each sample must arrive stamped with its collection
time, batched sends must leave no gap, and nothing collected during an outage or before a stop may be
missing afterwards."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest
import yaml

import push_monitor as pm
from conftest import NOT_ON_DEVICES, ROOT, agent_command, agent_env, run_agent
from testkit.process import free_port, stop_process, wait_until
from testkit.remote_write import Receiver, VictoriaMetrics, decode
from testkit.server import Prometheus, read_flags, render_server_config
from testkit.web import Endpoint

pytestmark = pytest.mark.integration

INTERVAL = 1.0
SEND_INTERVAL = pm.DEFAULT_SEND_INTERVAL  # the agent's default at a 1 s interval
STAMP = "push_monitor_collection_timestamp_seconds"
OUTAGE_SECONDS = 60
# Metric names both transports send (the Pushgateway path's core set, tests/test_agent_pushgateway.py).
CORE_METRICS = {
    "push_monitor_info", "push_monitor_interval_seconds", "push_monitor_push_failures_total", STAMP,
    "total_cpu_usage_percent", "total_memory_usage_percent", "app_cpu_usage_percent", "app_memory_usage_mb",
    "load_average_1m", "system_processes",
}  # fmt: skip
REMOTE_WRITE_METRICS = {
    "push_monitor_send_interval_seconds", "push_monitor_buffer_samples", "push_monitor_buffer_disk_bytes",
    "push_monitor_buffer_oldest_age_seconds", "push_monitor_buffer_dropped_samples_total",
}  # fmt: skip


class RemoteWriteAgent:
    """files/push_monitor.py --remote-write in the background, its buffer under its own state dir."""

    def __init__(self, workdir: Path, url: str, serial: str, *extra: str, interval: float = INTERVAL) -> None:
        self.serial = serial
        self.state_dir = workdir / f"state-{serial}"
        self.buffer_dir = self.state_dir / "remote-write-buffer"
        self.log = workdir / f"agent-{serial}.log"
        self.args = agent_command(
            "--remote-write", url, "--interval", str(interval), "--job", "rw-test", "--device-serial", serial,
            "--top-n", "3", "--state-dir", str(self.state_dir), *extra,
        )  # fmt: skip
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=self.log.open("ab"), env=agent_env()
        )

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def segments(self) -> List[Path]:
        return sorted(self.buffer_dir.glob("*.seg")) if self.buffer_dir.exists() else []

    def buffered_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.segments())

    def log_text(self) -> str:
        return self.log.read_text()


@pytest.fixture(scope="module")
def receiver_render(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prometheus role's files with the receiver on."""
    workdir = tmp_path_factory.mktemp("rw-render")
    return render_server_config(
        workdir / "render",
        {
            "prometheus_remote_write_receiver": True,
            "prometheus_rules_dir": str(workdir / "render" / "prometheus" / "rules"),
            "prometheus_evaluation_interval": "1s",  # the DeviceSilent test sees every second
        },
    )


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(float(n) * units[unit] for n, unit in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text))


def test_the_receiver_is_on_and_its_window_covers_the_agents_buffer(receiver_render: Path) -> None:
    assert "--web.enable-remote-write-receiver" in read_flags(receiver_render / "flags" / "prometheus.env")
    config = yaml.safe_load((receiver_render / "prometheus" / "prometheus.yml").read_text())
    window = duration_seconds(config["storage"]["tsdb"]["out_of_order_time_window"])
    device_defaults = yaml.safe_load((ROOT / "roles" / "push_monitor" / "defaults" / "main.yml").read_text())
    assert window >= pm.DEFAULT_BUFFER_MAX_AGE
    assert window >= device_defaults["push_monitor_remote_write_buffer_max_age"]


def role_prometheus(render: Path, workdir: Path, port: Optional[int] = None) -> Prometheus:
    return Prometheus(
        workdir, render / "prometheus" / "prometheus.yml", read_flags(render / "flags" / "prometheus.env"), port=port
    )


@pytest.fixture
def prometheus(receiver_render: Path, tmp_path: Path) -> Iterator[Prometheus]:
    server = role_prometheus(receiver_render, tmp_path)
    server.start()
    yield server
    server.stop()


def stamps(prometheus: Prometheus, serial: str, seconds: float) -> List[Tuple[float, float]]:
    """(sample timestamp, value) of the agent's collection-time gauge over the last seconds."""
    data = prometheus.api("query", query=f'{STAMP}{{device_serial="{serial}"}}[{int(seconds)}s]', time=time.time())
    return [(float(ts), float(value)) for series in data["result"] for ts, value in series["values"]]


def gaps(timestamps: List[float]) -> List[Tuple[float, float]]:
    ordered = sorted(timestamps)
    return [(a, b) for a, b in zip(ordered, ordered[1:]) if b - a > 2 * INTERVAL]


def write_requests(prometheus: Prometheus) -> float:
    """Remote-write requests Prometheus answered with a 2xx, from its own /metrics (not a scrape of them)."""
    return Endpoint(prometheus.url).counter(
        "prometheus_http_requests_total", 'handler="/api/v1/write"', 'code="2', timeout=10
    )


def test_batches_arrive_with_each_cycles_timestamp_no_gap_and_the_pushgateway_paths_names(
    prometheus: Prometheus, tmp_path: Path
) -> None:
    """At the default send interval (5 s at a 1 s interval) each request holds the cycles since the
    last one, each stamped with its own collection time."""
    agent = RemoteWriteAgent(tmp_path, prometheus.url + "/api/v1/write", "rw-arrive")
    agent.start()
    try:
        wait_until(lambda: len(stamps(prometheus, "rw-arrive", 60)) >= 11, 90, 0.5, message="eleven cycles")
    finally:
        agent.stop()
    arrived = stamps(prometheus, "rw-arrive", 120)
    for timestamp, collected in arrived:
        assert abs(timestamp - collected) < 0.002  # stored at the collection time, not the arrival time
    assert gaps([timestamp for timestamp, _ in arrived]) == []
    # The first cycle is sent at once, then one request per send interval (the stop's flush included).
    assert 2 <= write_requests(prometheus) <= 2 + len(arrived) / SEND_INTERVAL
    names = {series["__name__"] for series in prometheus.api("series", **{"match[]": '{device_serial="rw-arrive"}'})}
    assert names >= CORE_METRICS | REMOTE_WRITE_METRICS
    info = prometheus.instant('push_monitor_info{device_serial="rw-arrive"}')[0]["metric"]
    assert {k: v for k, v in info.items() if k not in ("hostname", "version")} == {
        "__name__": "push_monitor_info", "job": "rw-test", "device_serial": "rw-arrive",
    }  # fmt: skip
    assert not agent.segments()  # healthy: nothing was written to disk


def append_torn_record(segment: Path) -> None:
    """What a kill in the middle of a write leaves: the start of a record (a complete header that
    promises more payload than follows)."""
    data = segment.read_bytes()
    with segment.open("ab") as handle:
        handle.write(data[:40])


def test_no_gap_across_a_prometheus_outage_with_a_steady_and_a_killed_and_restarted_agent(
    receiver_render: Path, tmp_path: Path
) -> None:
    """Prometheus stopped for 60 s and started on the same TSDB. Agent "steady" runs throughout;
    agent "restarted" is SIGKILLed during the outage (a torn record appended to its buffer, as a kill
    mid-write leaves it) and started again. Both send at the default send interval, so their buffers
    hold batches. Afterwards both series have a sample every interval, the restarted one apart from
    the seconds it was not running and the batch it had not yet sent."""
    port = free_port()
    server = role_prometheus(receiver_render, tmp_path, port)
    server.start()
    url = server.url + "/api/v1/write"
    steady = RemoteWriteAgent(tmp_path, url, "rw-steady")
    restarted = RemoteWriteAgent(tmp_path, url, "rw-restarted")
    steady.start()
    restarted.start()
    try:
        wait_until(lambda: len(stamps(server, "rw-steady", 60)) >= 3, 60, 0.5, message="first samples")
        wait_until(lambda: len(stamps(server, "rw-restarted", 60)) >= 3, 60, 0.5, message="first samples")
        server.stop()
        outage_started = time.time()
        wait_until(lambda: restarted.buffered_bytes() > 0, 30, 0.2, message="the buffer on disk")
        time.sleep(OUTAGE_SECONDS / 2)
        restarted.kill()
        killed_at = time.time()
        append_torn_record(restarted.segments()[-1])
        restarted.start()
        time.sleep(max(0.0, outage_started + OUTAGE_SECONDS - time.time()))
        server = role_prometheus(receiver_render, tmp_path, port)
        server.start()
        recovered_at = time.time()
        for agent in (steady, restarted):
            wait_until(lambda agent=agent: not agent.segments(), 240, 1, message=f"{agent.serial} replayed")
        window = time.time() - outage_started + 30
        steady_times = [ts for ts, _ in stamps(server, "rw-steady", window)]
        restarted_times = [ts for ts, _ in stamps(server, "rw-restarted", window)]
        assert min(steady_times) < outage_started - 2 and max(steady_times) > recovered_at
        assert gaps(steady_times) == []
        # The restarted agent's only gap is its own restart: from the kill to its first new cycle.
        restart_gaps = gaps(restarted_times)
        assert len(restart_gaps) <= 1
        for before, after in restart_gaps:
            # A kill loses the cycles collected since the last send (nothing is on disk while healthy).
            assert killed_at - SEND_INTERVAL - 2 * INTERVAL <= before and after <= killed_at + 15
        assert min(restarted_times) < outage_started - 2 and max(restarted_times) > recovered_at
        assert "ends in a torn record" in restarted.log_text()
        for agent in (steady, restarted):
            assert "Traceback" not in agent.log_text()
        dropped = server.instant("max by (device_serial) (push_monitor_buffer_dropped_samples_total)")
        assert {(s["metric"]["device_serial"], s["value"][1]) for s in dropped} >= {("rw-steady", "0")}
    finally:
        steady.stop()
        restarted.stop()
        server.stop()


def test_a_full_buffer_drops_the_oldest_and_counts_them(receiver_render: Path, tmp_path: Path) -> None:
    port = free_port()
    agent = RemoteWriteAgent(
        tmp_path, f"http://127.0.0.1:{port}/api/v1/write", "rw-full", "--buffer-max-bytes", "65536",
        "--remote-write-send-interval", "0.1", interval=0.1,
    )  # fmt: skip
    agent.start()
    # The endpoint is down from the start, so the first cycle goes straight into the first segment:
    # every sample stamped before this moment is from the cycles the full buffer must drop first.
    wait_until(agent.segments, 30, 0.02, message="the first cycle in the buffer")
    first_spill = time.time()
    server = role_prometheus(receiver_render, tmp_path, port)
    try:
        # Full: the oldest segment was deleted (segments are numbered from 1).
        wait_until(lambda: agent.segments() and agent.segments()[0].name != "000000000001.seg", 60, 0.2,
                   message="the oldest segment dropped")  # fmt: skip
        assert agent.buffered_bytes() <= 65536 + 8192
        server.start()
        wait_until(lambda: not agent.segments(), 120, 0.5, message="the rest replayed")
        assert agent.process is not None and agent.process.poll() is None
        data = server.api("query", query=f'{STAMP}{{device_serial="rw-full"}}[10m]', time=time.time())
        dropped = server.instant(
            'max(max_over_time(push_monitor_buffer_dropped_samples_total{device_serial="rw-full"}[10m]))'
        )
    finally:
        agent.stop()
        server.stop()
    arrived = [float(ts) for series in data["result"] for ts, _ in series["values"]]
    assert min(arrived) > first_spill  # the first cycles were dropped
    assert float(dropped[0]["value"][1]) > 0
    assert "Traceback" not in agent.log_text()


def test_the_requests_follow_the_remote_write_spec(tmp_path: Path) -> None:
    with Receiver() as receiver:
        result = run_agent("--remote-write", receiver.url, "--once", "--device-serial", "spec", "--job", "j",
                           "--state-dir", str(tmp_path), refused=NOT_ON_DEVICES)  # fmt: skip
        assert result.returncode == 0, result.stderr
    (request,) = receiver.requests
    assert request.headers["content-encoding"] == "snappy"
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.headers["x-prometheus-remote-write-version"] == "0.1.0"
    series = decode(request.body)
    for one in series:
        names = [name for name, _ in one.labels]
        assert names == sorted(names) and len(one.samples) == 1
        assert dict(one.labels)["job"] == "j" and dict(one.labels)["device_serial"] == "spec"
    assert len({one.samples[0][0] for one in series}) == 1  # one collection time for the whole cycle


def test_a_4xx_drops_the_batch_with_one_line_and_a_5xx_keeps_it(tmp_path: Path) -> None:
    with Receiver(status=400) as receiver:
        agent = RemoteWriteAgent(tmp_path, receiver.url, "rw-400", "--remote-write-send-interval", "0.5", interval=0.5)
        agent.start()
        try:
            wait_until(lambda: len(receiver.requests) >= 5, 30, 0.1, message="five refused cycles")
            assert not agent.segments()
            receiver.status = 503
            wait_until(lambda: agent.buffered_bytes() > 0, 30, 0.1, message="a 503 kept on disk")
            receiver.status = 204
            wait_until(lambda: not agent.segments(), 60, 0.2, message="the kept cycles replayed")
        finally:
            agent.stop()
    refused = [line for line in agent.log_text().splitlines() if "HTTP 400" in line]
    assert len(refused) == 1 and "dropped (not retried)" in refused[0]
    dropped = [
        v for s in receiver.series() if s.name == "push_monitor_buffer_dropped_samples_total" for _, v in s.samples
    ]
    assert max(dropped) > 0


def test_victoria_metrics_stores_the_agents_samples_with_their_timestamps(tmp_path: Path) -> None:
    store = VictoriaMetrics(tmp_path)
    store.start()
    agent = RemoteWriteAgent(tmp_path, store.url + "/api/v1/write", "rw-vm")
    selector = f'{STAMP}{{device_serial="rw-vm",job="rw-test"}}'
    try:
        agent.start()
        wait_until(lambda: sum(len(s["values"]) for s in store.export(selector)) >= 3, 60, 0.5, message="3 samples")
        (series,) = store.export(selector)
    finally:
        agent.stop()
        store.stop()
    for timestamp_ms, collected in zip(series["timestamps"], series["values"]):
        assert abs(timestamp_ms / 1000 - collected) < 0.002


def test_sigterm_sends_the_cycles_not_yet_sent(tmp_path: Path) -> None:
    """A send interval far beyond the test: only the first cycle (sent at once) and the stop's flush
    can arrive, and together they hold every cycle, contiguous."""
    with Receiver() as receiver:
        agent = RemoteWriteAgent(tmp_path, receiver.url, "rw-stop", "--remote-write-send-interval", "3600",
                                 interval=0.2)  # fmt: skip
        agent.start()
        try:
            wait_until(lambda: receiver.requests, 30, 0.1, message="the first cycle")
            time.sleep(2)  # cycles to flush
        finally:
            agent.stop()
        assert agent.log_text().count("stopping: sent the last") == 1
        collected = [
            [value for one in decode(request.body) if one.name == STAMP for _, value in one.samples]
            for request in receiver.requests
        ]
    assert len(collected) == 2 and len(collected[0]) == 1 and len(collected[1]) >= 3
    every = sorted(collected[0] + collected[1])
    assert all(0 < later - earlier < 2 * 0.2 for earlier, later in zip(every, every[1:]))


def test_sigterm_keeps_what_the_server_does_not_take(tmp_path: Path) -> None:
    with Receiver(status=503) as receiver:
        agent = RemoteWriteAgent(tmp_path, receiver.url, "rw-stop-down", "--remote-write-send-interval", "3600",
                                 interval=0.2)  # fmt: skip
        agent.start()
        try:
            wait_until(agent.segments, 30, 0.1, message="the first cycle kept")
            time.sleep(2)
        finally:
            agent.stop()
        sent = sum(len(one.samples) for request in receiver.requests for one in decode(request.body))
    assert len(receiver.requests) == 2 and "kept in the buffer" in agent.log_text()
    kept = pm.DiskBuffer(str(agent.buffer_dir), pm.DEFAULT_BUFFER_MAX_BYTES, pm.DEFAULT_BUFFER_MAX_AGE)
    assert kept.samples == sent


def test_devicesilent_waits_a_batching_devices_send_interval(prometheus: Prometheus, tmp_path: Path) -> None:
    """Interval 0.5 s, send interval 3 s: the newest stored sample is often more than 3 x the interval
    old, never more than 3 x the send interval; the role's rules must not call the device silent."""
    serial = "rw-batching"
    agent = RemoteWriteAgent(tmp_path, prometheus.url + "/api/v1/write", serial, "--remote-write-send-interval", "3",
                             interval=0.5)  # fmt: skip
    agent.start()
    selector = f'{{device_serial="{serial}"}}'
    try:
        # The rules evaluated every second over five sends' worth of data.
        evaluations = f"count_over_time(job_device_serial:push_age:seconds{selector}[20s]) >= 15"
        wait_until(lambda: prometheus.instant(evaluations), 90, 1, message="15 evaluations of the push age")
        oldest = prometheus.instant(f"max_over_time(job_device_serial:push_age:seconds{selector}[30s])")
        silent = prometheus.instant(f"count_over_time(job_device_serial:silent_push_age:seconds{selector}[30s])")
        interval = prometheus.instant(f"job_device_serial:interval:seconds{selector}")
        alerts = prometheus.instant(f'ALERTS{{alertname="DeviceSilent",device_serial="{serial}"}}')
    finally:
        agent.stop()
    assert float(oldest[0]["value"][1]) > 3 * 0.5  # what the collection interval alone would call silent
    assert silent == [] and alerts == []
    assert float(interval[0]["value"][1]) == 3
