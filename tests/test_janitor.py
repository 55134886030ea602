"""The Pushgateway janitor against a real Pushgateway: stale groups go, fresh ones stay."""

from __future__ import annotations

import json
import subprocess
import time
from http.server import BaseHTTPRequestHandler
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from conftest import (
    NOT_ON_DEVICES,
    ROOT,
    LoopbackHTTPServer,
    Pushgateway,
    agent_env,
    command_refusing,
    run_agent,
    wait_until,
)

pytestmark = pytest.mark.integration
JANITOR = ROOT / "files" / "pushgateway_janitor.py"


def janitor(*args: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """The janitor needs the standard library only: every run refuses prometheus_client."""
    command = command_refusing(NOT_ON_DEVICES, JANITOR, *args)
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=agent_env(env))


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


@pytest.mark.parametrize(
    ("args", "env", "blamed"),
    [
        (["--max-age", "0"], {}, "--max-age"),
        (["--max-age", "soon"], {}, "--max-age"),
        ([], {"JANITOR_MAX_AGE": "soon"}, "JANITOR_MAX_AGE"),
        (["--pushgateway", "gateway:9091"], {}, "--pushgateway"),
        ([], {"PUSHGATEWAY_URL": "gateway:9091"}, "PUSHGATEWAY_URL"),
        (["--username", "u"], {}, "--username"),
        ([], {"PUSHGATEWAY_USERNAME": "u"}, "PUSHGATEWAY_USERNAME"),
        (["--username", "u", "--password-file", "/nonexistent"], {}, "--password-file"),
        ([], {"PUSHGATEWAY_PASSWORD": "pw"}, "--username"),
        (["--no-such-flag"], {}, "--no-such-flag"),
        (["--max-age"], {}, "--max-age"),
    ],
)
def test_bad_input_exits_2_in_one_line_naming_its_source(args, env, blamed) -> None:
    result = janitor(*args, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("pushgateway_janitor: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert blamed in result.stderr


def test_unreachable_gateway_is_exit_1_without_traceback(tmp_path) -> None:
    result = janitor("--pushgateway", Pushgateway(tmp_path).url)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr


class FakeGateway:
    """Answers GET /api/v1/metrics with a given body and DELETE with a status per group path."""

    def __init__(self, listing: bytes, delete_status: Optional[Dict[str, int]] = None) -> None:
        self.deletes: List[Tuple[str, int]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self._reply(200, listing)

            def do_DELETE(self) -> None:  # noqa: N802
                status = (delete_status or {}).get(self.path, 202)
                fake.deletes.append((self.path, status))
                self._reply(status, b"")

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.http = LoopbackHTTPServer(Handler)
        self.url = self.http.url

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def fake_gateway() -> Iterator:
    started: List[FakeGateway] = []

    def start(listing: bytes, delete_status: Optional[Dict[str, int]] = None) -> FakeGateway:
        started.append(FakeGateway(listing, delete_status))
        return started[-1]

    yield start
    for gateway in started:
        gateway.close()


def group(serial: str, pushed: object) -> dict:
    return {
        "labels": {"job": "j", "device_serial": serial},
        "push_time_seconds": {"metrics": [{"labels": {}, "value": pushed}]},
    }


@pytest.mark.parametrize(
    "listing",
    [
        b"<html><body>Please log in to the hotel network</body></html>",
        b'{"status": "success"}',
        b'{"data": "maintenance"}',
        b'{"data": [{"no": "labels"}]}',
        b"",
    ],
    ids=["html", "no-data", "data-not-a-list", "group-without-labels", "empty"],
)
def test_a_listing_that_is_not_the_gateways_is_one_line_exit_1(fake_gateway, listing: bytes) -> None:
    gateway = fake_gateway(listing)
    result = janitor("--pushgateway", gateway.url, "--max-age", "10")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "not a" in result.stderr, result.stderr
    assert gateway.deletes == []


def test_a_group_with_an_unreadable_push_time_is_kept_and_the_rest_is_cleaned(fake_gateway) -> None:
    listing = {"status": "success", "data": [group("odd", "yesterday"), group("nan", "NaN"), group("old", "1.5")]}
    gateway = fake_gateway(json.dumps(listing).encode())
    result = janitor("--pushgateway", gateway.url, "--max-age", "10")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert gateway.deletes == [("/metrics/job/j/device_serial/old", 202)]
    assert "'odd'" in result.stderr and "'nan'" in result.stderr


def test_one_refused_delete_does_not_stop_the_others(fake_gateway) -> None:
    listing = {"data": [group(serial, "100") for serial in ("a", "b", "c")]}
    gateway = fake_gateway(json.dumps(listing).encode(), {"/metrics/job/j/device_serial/a": 500})
    result = janitor("--pushgateway", gateway.url, "--max-age", "10")
    assert [path for path, _ in gateway.deletes] == [f"/metrics/job/j/device_serial/{s}" for s in ("a", "b", "c")]
    assert result.returncode == 1
    assert "could not delete group" in result.stderr and "1 delete(s) failed" in result.stderr


def test_dot_groups_are_deleted_in_base64(pushgateway: Pushgateway) -> None:
    push(pushgateway, "..", job=".")
    time.sleep(2.5)
    result = janitor("--pushgateway", pushgateway.url, "--max-age", "2")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: pushgateway.group(".", "..") is None, 5, message="dot group deleted")
