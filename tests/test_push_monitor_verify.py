"""The rollout's verify judgement (roles/push_monitor/filter_plugins/push_freshness.py) on what a real
Pushgateway answers after a real agent pushed: fresh, missing, too old, pushed by the agent from
before a restart, and a gateway that does not answer."""

from __future__ import annotations

import importlib.util
import json
import time
import urllib.request
from typing import Any, Dict

import pytest

from conftest import run_agent
from testkit import ROOT

pytestmark = pytest.mark.integration

_SPEC = importlib.util.spec_from_file_location(
    "push_freshness", ROOT / "roles" / "push_monitor" / "filter_plugins" / "push_freshness.py"
)
push_freshness = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(push_freshness)


def read_gateway(url: str) -> Dict[str, Any]:
    """GET /api/v1/metrics as the uri module registers it: status, date header and parsed json."""
    with urllib.request.urlopen(url + "/api/v1/metrics", timeout=5) as answer:
        return {"status": answer.status, "date": answer.headers["Date"], "json": json.loads(answer.read())}


def target(**overrides: Any) -> Dict[str, Any]:
    return {"host": "dev-1", "url": "u", "job": "critical", "serial": "SER-1", "max_age": 60, "since": 0, **overrides}


def test_judges_a_real_agent_s_push(pushgateway, run_agent_once) -> None:
    started_before = time.time() - 1
    run_agent_once(pushgateway.url, job="critical", serial="SER-1")
    read = read_gateway(pushgateway.url)
    stale = push_freshness.push_monitor_stale

    assert stale(read, [target()]) == {}
    # The agent started after `since`: a restart this run is satisfied, whatever the other targets say.
    assert stale(read, [target(since=started_before)], ["dev-1"]) == {}
    assert stale(read, [target(since=time.time() + 60)], ["dev-1"]) == {
        "dev-1": "the pushes come from the agent that ran before the restart"
    }
    # `since` only counts for a restarted host.
    assert stale(read, [target(since=time.time() + 60)], ["another-host"]) == {}
    assert stale(read, [target(job="regular")]) == {"dev-1": "no push of this serial and job at the Pushgateway"}
    assert stale(read, [target(serial="SER-2")]) == {"dev-1": "no push of this serial and job at the Pushgateway"}
    assert stale(read, [target(max_age=-5)])["dev-1"].startswith("the last push is ")


def test_reads_are_matched_to_their_gateway_and_a_silent_gateway_fails_its_devices(pushgateway, run_agent_once) -> None:
    run_agent_once(pushgateway.url, job="critical", serial="SER-1")
    answered = {**read_gateway(pushgateway.url), "item": {"url": "https://a"}}
    refused = {"status": -1, "msg": "Status code was -1: Connection refused", "item": {"url": "https://b"}}
    stale = push_freshness.push_monitor_stale_reads(
        [answered, refused],
        [
            target(url="https://a"),
            target(host="dev-2", url="https://b"),
            target(host="dev-3", url="https://a", serial="X"),
        ],
    )
    assert stale == {
        "dev-2": "the Pushgateway did not answer: Status code was -1: Connection refused",
        "dev-3": "no push of this serial and job at the Pushgateway",
    }


@pytest.fixture
def run_agent_once():
    def push(url: str, job: str, serial: str) -> None:
        done = run_agent("--once", env={"PUSHGATEWAY_URL": url, "DEVICE_JOB": job, "DEVICE_SERIAL": serial})
        assert done.returncode == 0, done.stderr

    return push
