"""The benchmarks refuse bad options with one line and exit 2, before they start anything."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize(
    ("script", "options", "message"),
    [
        ("rollout.py", ["--devices", "0"], "expected device counts from 1 to 50"),
        ("rollout.py", ["--devices", "1,x"], "expected device counts from 1 to 50"),
        ("rollout.py", ["--connections", "podman,telnet"], "expected some of podman,ssh,mitogen"),
        ("rollout.py", ["--run-timeout", "0"], "--run-timeout must be > 0"),
        ("agent_cost.py", ["--cycles", "0"], "--cycles must be >= 1"),
        ("agent_cost.py", ["--interval", "nan"], "--interval must be between 0.1 and 60 seconds"),
    ],
)
def test_bad_options_exit_2_with_one_line(script: str, options: list, message: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
