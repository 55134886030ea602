"""bench/ingest.py runs end to end in its quick mode: both subjects, every row, the ratio and the targets.

No timing is asserted here (the ingest targets live in bench/ and docs/benchmarks.md); this proves the
benchmark itself works against the real Pushgateway and Prometheus, and that it cleans up after itself.
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

BENCH = ROOT / "bench" / "ingest.py"
NUMBER = r"(?:\d+(?:\.\d+)?|n/a)"
# subject N offered achieved failed p50 p99 lag99 scrape up samples gen% gw% prom% other% scrapeCPU pushCPU load verdict
ROW = (
    r"^(?P<label>\S+)\s+(?P<n>\d+)\s+(?P<offered>\d+)\s+(?P<achieved>\d+)\s+(?P<failed>\d+)\s+"
    r"(?P<p50>[\d.]+)\s+(?P<p99>[\d.]+)\s+(?P<lag>[\d.]+)\s+(?P<scrape>" + NUMBER + r")\s+(?P<up>" + NUMBER + r")\s+"
    r"(?P<samples>" + NUMBER + r")\s+(?P<gen>-?[\d.]+)\s+(?P<gw>-?[\d.]+)\s+(?P<prom>-?[\d.]+)\s+(?P<other>-?[\d.]+)\s+"
    r"(?P<scrape_cpu>" + NUMBER + r")\s+(?P<push_cpu>" + NUMBER + r")\s+"
    r"[\d.]+ [\d.]+ [\d.]+\s+(?P<verdict>pass|FAIL: .+)$"
)


def test_quick_run_reports_both_subjects_every_step_and_the_ratio() -> None:
    marker = f"INGEST_SMOKE={uuid.uuid4().hex}"
    name, value = marker.split("=")
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=420,
        env={**os.environ, name: value},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    rows = [match.groupdict() for match in re.finditer(ROW, out, re.MULTILINE)]
    for label in ("stock", "role"):
        steps = [r for r in rows if r["label"] == label]
        assert steps, f"no rows for {label}:\n{out}"
        # The quick ramp is 5,10: a subject stops only after a failing step.
        assert [int(r["n"]) for r in steps] == [5, 10][: len(steps)], out
        assert len(steps) == 2 or steps[-1]["verdict"].startswith("FAIL"), out
        for step in steps:
            assert int(step["offered"]) == int(step["n"])  # 1 s interval: one push per device a second
            assert step["samples"] != "n/a" and int(step["samples"]) >= 60 * int(step["n"]), out  # real scrapes
            assert step["up"] != "n/a", out
        assert re.search(rf"^{label}: \d+ devices", out, re.MULTILINE), out
    ratio = r"^ratio role/stock = (?:[\d.]+x \(|n/a \(stock passed no step; )target >= 20x: (PASS|MISS)\)$"
    assert re.search(ratio, out, re.MULTILINE), out
    assert re.search(r"^role devices = \d+ \(target >= 2000: (PASS|MISS)\)$", out, re.MULTILINE), out
    assert re.search(r"payload: files/push_monitor.py --print --top-n 10: \d+ series per device", out)
    assert re.search(r"gateway flags: .*--persistence.interval=", out), "the role's flags were not rendered"
    assert re.search(r"load average at start: [\d.]+ [\d.]+ [\d.]+", out)
    assert processes_marked(marker) == [], "the benchmark left processes behind"


def test_bad_ramp_is_one_clear_error() -> None:
    result = subprocess.run([sys.executable, str(BENCH), "--ramp", "50,10"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "expected increasing positive device counts" in result.stderr
    assert "Traceback" not in result.stderr
