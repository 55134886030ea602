"""bench/ingest.py runs end to end in its quick mode: every subject, every row, the ratios and the targets.

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
# subject N offered achieved failed p99 scrape up samples gen% gw% prom% other% scrapeCPU pushCPU verdict
ROW = (
    r"^(?P<label>\S+)\s+(?P<n>\d+)\s+(?P<offered>\d+)\s+(?P<achieved>\d+)\s+(?P<failed>\d+)\s+"
    r"(?P<p99>[\d.]+)\s+(?P<scrape>" + NUMBER + r")\s+(?P<up>" + NUMBER + r")\s+"
    r"(?P<samples>" + NUMBER + r")\s+(?P<gen>-?[\d.]+)\s+(?P<gw>-?[\d.]+)\s+(?P<prom>-?[\d.]+)\s+(?P<other>-?[\d.]+)\s+"
    r"(?P<scrape_cpu>" + NUMBER + r")\s+(?P<push_cpu>" + NUMBER + r")\s+(?P<verdict>pass|FAIL: .+)$"
)


def test_quick_run_reports_every_subject_every_step_and_the_ratios() -> None:
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
    remote_write = [r for r in rows if r["label"] == "remote_write"]
    assert [int(r["n"]) for r in remote_write] == [5, 10][: len(remote_write)] and remote_write, out
    assert len(remote_write) == 2 or remote_write[-1]["verdict"].startswith("FAIL"), out
    assert re.search(r"^ratio remote_write/role = [\d.]+x \(target >= 3x: (PASS|MISS)\)$", out, re.MULTILINE), out
    # Remote write at the agent's default send interval (a request per 5 s) and at one request per cycle.
    wire = r"wire bytes per sample \(request head \+ body\): pushgateway [\d.]+, remote write ([\d.]+) "
    batched, single = re.search(wire + r"\(send interval 5 s\), ([\d.]+) \(send interval 1 s\)$", out, re.M).groups()
    assert float(batched) < float(single), out
    # A request holds a device's 5 s of 1 s cycles: a fifth of the requests per second, and no scrapes.
    for step in remote_write:
        assert int(step["offered"]) == int(step["n"]) // 5 and step["scrape"] == "n/a", out
    ratio = r"^ratio role/stock = (?:[\d.]+x \(|n/a \(stock passed no step; )target >= 20x: (PASS|MISS)\)$"
    assert re.search(ratio, out, re.MULTILINE), out
    assert re.search(r"^role devices = \d+ \(target >= 2000: (PASS|MISS)\)$", out, re.MULTILINE), out
    assert re.search(r"payload: the agent's collection and encoding, top-n 10: \d+ series per device", out)
    assert re.search(r"gateway flags: .*--persistence.interval=", out), "the role's flags were not rendered"
    assert processes_marked(marker) == [], "the benchmark left processes behind"


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--ramp", "50,10"], "expected increasing positive device counts"),
     (["--send-interval", "0"], "expected whole seconds from 1 to 60")],
)  # fmt: skip
def test_bad_input_is_one_clear_error(argv: list, message: str) -> None:
    result = subprocess.run([sys.executable, str(BENCH), *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
