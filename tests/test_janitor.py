"""The Pushgateway janitor against a real Pushgateway: stale groups go, fresh ones stay."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import ROOT, Pushgateway, run_agent, wait_until

pytestmark = pytest.mark.integration
JANITOR = ROOT / "files" / "pushgateway_janitor.py"


def janitor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(JANITOR), *args], capture_output=True, text=True, timeout=60)


def push(gateway: Pushgateway, serial: str, job: str = "device-metrics") -> None:
    result = run_agent("--once", "--pushgateway", gateway.url, "--device-serial", serial, "--job", job, "--top-n", "1")
    assert result.returncode == 0, result.stderr


def test_deletes_only_groups_older_than_max_age(pushgateway: Pushgateway) -> None:
    push(pushgateway, "old/device ü")
    push(pushgateway, "old-other-job", job="dev machines")
    time.sleep(3)
    push(pushgateway, "fresh")

    dry = janitor("--pushgateway", pushgateway.url, "--max-age", "2", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stderr.count("would delete") == 2
    assert len(pushgateway.groups()) == 3

    only_job = janitor("--pushgateway", pushgateway.url, "--max-age", "2", "--job", "dev machines")
    assert only_job.returncode == 0, only_job.stderr
    wait_until(lambda: pushgateway.group("dev machines", "old-other-job") is None, 5, message="job-filtered delete")
    assert pushgateway.group("device-metrics", "old/device ü") is not None

    result = janitor("--pushgateway", pushgateway.url, "--max-age", "2")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: pushgateway.group("device-metrics", "old/device ü") is None, 5, message="stale group deleted")
    assert pushgateway.group("device-metrics", "fresh") is not None


@pytest.mark.parametrize("args", [["--max-age", "0"], ["--max-age", "soon"], ["--pushgateway", "gateway:9091"]])
def test_bad_input_exits_2(args) -> None:
    result = janitor(*args)
    assert result.returncode == 2
    assert "error:" in result.stderr


def test_unreachable_gateway_is_exit_1_without_traceback(tmp_path) -> None:
    result = janitor("--pushgateway", Pushgateway(tmp_path).url)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
