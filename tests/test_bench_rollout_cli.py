"""bench/rollout.py refuses bad options with one line and exit 2, before it touches podman."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

BENCH = ROOT / "bench" / "rollout.py"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--devices", "0"], "device counts must be between 1 and 50"),
        (["--devices", "1,x"], "not a comma-separated list of integers"),
        (["--connections", "podman,telnet"], "connections are among podman,ssh,mitogen"),
        (["--run-timeout", "0"], "--run-timeout must be > 0"),
    ],
)
def test_bad_options_exit_2_with_one_line(options: list, message: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), *options], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
