#!/usr/bin/env python3
"""How fast the agent replays a backlog after an outage, while its live cycles keep going: a real backlog
of this host's metrics in the agent's disk buffer, then files/push_monitor.py --remote-write against the
prometheus role's Prometheus until the buffer is empty; the method, the command and the results are in
docs/benchmarks.md. Exit 0 with the speed and the failed live cycles against their targets, PASS or MISS;
1 if the benchmark cannot run, 2 on bad options."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "files"))

import push_monitor as pm  # noqa: E402
from testkit.bench import machine, run_benchmark, verdict  # noqa: E402
from testkit.process import stop_process, wait_until  # noqa: E402
from testkit.server import role_prometheus  # noqa: E402

AGENT = ROOT / "files" / "push_monitor.py"
SERIAL = "bench-replay"
TARGET_SPEED = 30.0
# The backlog's host name: its series are told apart from the live cycles' (the real host name).
BACKLOG_HOST = "replay-backlog"
BACKLOG_SERIES = f'push_monitor_collection_timestamp_seconds{{device_serial="{SERIAL}",hostname="{BACKLOG_HOST}"}}'


def write_backlog(state_dir: Path, seconds: int) -> pm.DiskBuffer:
    """One cycle per second of the last `seconds`, as the agent would have buffered them."""
    compress, _ = pm.load_snappy()
    sampler = pm.Sampler(10)
    time.sleep(0.5)
    exposition = pm.Exposition(SERIAL, BACKLOG_HOST, 1.0)
    encoder = pm.WriteRequestEncoder("bench", exposition.device_labels)
    snapshot = sampler.sample()
    buffer = pm.DiskBuffer(str(state_dir / pm.BUFFER_DIR), pm.DEFAULT_BUFFER_MAX_BYTES, pm.DEFAULT_BUFFER_MAX_AGE)
    start = time.time() - seconds
    for second in range(seconds):
        collected = start + second
        payload, samples = encoder.encode(exposition.families(snapshot, collected), int(collected * 1000))
        buffer.append(pm.Record(int(collected * 1000), samples, compress(payload)))
    buffer.close()
    return buffer


def measure(hours: float) -> Iterator[str]:
    seconds = int(hours * 3600)
    yield f"machine: {machine()}"
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        workdir = Path(tmp)
        prometheus, _ = role_prometheus(workdir, {"prometheus_remote_write_receiver": True})
        prometheus.start()
        agent: Optional[subprocess.Popen] = None
        try:
            buffer = write_backlog(workdir / "state", seconds)
            segments = workdir / "state" / pm.BUFFER_DIR
            log = workdir / "agent.log"
            started = time.monotonic()
            with log.open("ab") as stderr:
                agent = subprocess.Popen(
                    [sys.executable, str(AGENT), "--remote-write", f"{prometheus.url}/api/v1/write", "--job", "bench",
                     "--device-serial", SERIAL, "--interval", "1", "--state-dir", str(workdir / "state")],
                    stdout=subprocess.DEVNULL, stderr=stderr,
                )  # fmt: skip
            wait_until(lambda: not list(segments.glob("*.seg")), 40 * seconds, 0.2, message="the backlog replayed")
            replayed = time.monotonic() - started
            failures = [line for line in log.read_text().splitlines() if "failed" in line or "refused" in line]
            stored = prometheus.instant(f"count_over_time({BACKLOG_SERIES}[{seconds + 120}s])")
        finally:
            stop_process(agent)
            prometheus.stop()
    speed = seconds / replayed
    yield f"backlog: {seconds} cycles ({hours:g} h at 1 s), {buffer.samples} samples, {buffer.disk_bytes} bytes on disk"
    yield (
        f"replayed in {replayed:.1f} s (from the agent's start, its 0-10 s start spread included): "
        f"{speed:.0f}x real time (target >= {TARGET_SPEED:g}x: {verdict(speed >= TARGET_SPEED)})"
    )
    yield f"live cycles failed meanwhile: {len(failures)} (target 0: {verdict(not failures)})"
    held = int(float(stored[0]["value"][1])) if stored else 0
    yield f"Prometheus holds {held} of the {seconds} backlog cycles (its collection-time series)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=1.0, help="backlog length in hours (default 1)")
    args = parser.parse_args(argv)
    if not 0 < args.hours <= 24:
        parser.error("--hours must be in (0, 24]")
    return run_benchmark("bench/replay.py", lambda: measure(args.hours), errors=(pm.ConfigError,))


if __name__ == "__main__":
    sys.exit(main())
