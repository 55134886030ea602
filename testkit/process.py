"""Free loopback ports, polling, stopping the processes a test or benchmark started, and their CPU time and
status from /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.05, message: str = "condition"
) -> float:
    """Polls until predicate() is truthy; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def stop_process(process: Optional[subprocess.Popen], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within timeout seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def start_daemon(
    argv: Sequence[str], log: Path, answers: Callable[[], object], timeout: float = 30
) -> subprocess.Popen:
    """Starts a server, its stderr appended to log, and returns once answers() is truthy (an OSError, urllib's
    HTTPError included, counts as not yet); stops it and raises AssertionError if it exits or never answers."""
    with open(log, "ab") as stderr:
        process = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=stderr)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(
                f"{argv[0]} exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        try:
            return bool(answers())
        except OSError:
            return False

    try:
        wait_until(ready, timeout, 0.1, message=f"{argv[0]} to answer (log: {log})")
    except BaseException:
        stop_process(process)
        raise
    return process


def processes_marked(marker: str) -> List[int]:
    """Pids whose environment carries marker: every process a benchmark starts inherits it."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(int(entry))
        except OSError:
            continue  # gone, or a kernel thread
    return found


def proc_status(pid: int, field: str) -> str:
    """One field of /proc/<pid>/status (VmHWM, SigCgt, ...), its value as written there."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (the leader's stat sums its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as handle:
        raw = handle.read()
    fields = raw[raw.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def host_cpu_seconds() -> Tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, over all cores: everything running counts."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(value) for value in handle.readline().split()[1:]]
    total = sum(values[:8])  # guest time is already inside user/nice
    return (total - values[3] - values[4]) / TICKS_PER_SECOND, total / TICKS_PER_SECOND  # idle, iowait: not busy
