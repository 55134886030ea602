"""The agent benchmark runs end to end in its quick mode, reports all five subjects and every target,
and cleans up.

No timing is asserted here (speed targets live in bench/); this proves the benchmark itself works:
real Pushgateways (one served over TLS with basic auth), a real Prometheus receiving remote write, the
real agent in all three modes, the naive agent and a real node_exporter.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest

from testkit import ROOT
from testkit.process import processes_marked

pytestmark = pytest.mark.integration

BENCH = ROOT / "bench" / "agent_cost.py"
ROW = r"\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$"


def test_quick_run_reports_five_subjects_and_every_target() -> None:
    marker = f"AGENT_COST_SMOKE={uuid.uuid4().hex}"
    name, value = marker.split("=")
    result = subprocess.run(
        # Cycles enough for each subject to use a few clock ticks of CPU (/proc's 10 ms resolution).
        [sys.executable, str(BENCH), "--quick", "--cycles", "10"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, name: value},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    rows = {}
    labels = (
        "agent (files/push_monitor.py)",
        "agent over TLS + basic auth (same script)",
        "agent remote write, sent every 1 s",
        "naive (bench/naive_agent.py)",
        "node_exporter",
    )
    for label in labels:
        match = re.search(re.escape(label) + r".*?" + ROW, out, re.MULTILINE)
        assert match, f"no table row for {label}:\n{out}"
        rows[label] = match.groups()
    for cycles, cpu_ms, _cpu_share, rss_mib in rows.values():
        assert int(cycles) >= 1
        assert float(cpu_ms) >= 0
        assert float(rss_mib) > 1  # a real process's peak RSS, read from /proc
    ratio_lines = [
        r"agent CPU/cycle / node_exporter CPU/scrape +=  *[\d.]+ +target <= 0\.6 +(PASS|MISS)",
        r"agent CPU/cycle / naive CPU/cycle +=  *[\d.]+ +target <= 0\.5 +(PASS|MISS)",
        r"agent peak RSS += +[\d.]+ MB .*target <= 30 MB +(PASS|MISS)",
        r"agent TLS CPU/cycle / node_exporter CPU/scrape +=  *[\d.]+ +target <= 0\.6 +(PASS|MISS)",
        r"agent TLS CPU/cycle / agent CPU/cycle +=  *[\d.]+$",
        r"agent TLS peak RSS += +[\d.]+ MB .*target <= 30 MB +(PASS|MISS)",
        r"agent RW CPU/cycle / agent CPU/cycle +=  *[\d.]+ +target <= 1 +(PASS|MISS)",
        r"agent RW peak RSS += +[\d.]+ MB .*target <= 30 MB +(PASS|MISS)",
    ]
    for pattern in ratio_lines:
        assert re.search(pattern, out, re.MULTILINE), f"missing ratio line /{pattern}/:\n{out}"
    counts = re.search(r"processes on the host (\d+)-(\d+)", out)
    assert counts and int(counts.group(1)) >= 150, out
    busy = re.search(r"host busy share: (\d+)% of all CPU time.*$", out, re.MULTILINE)
    assert busy, out
    assert busy.group(0).endswith("too busy to count (>= 30 %)") == (int(busy.group(1)) >= 30), out
    assert "Python 3." in out
    assert processes_marked(marker) == [], "the benchmark left processes behind"
