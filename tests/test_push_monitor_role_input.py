"""Bad role input stops the play before anything on the host changes, with a message naming the
variable. Real ansible-playbook runs against localhost; the role's checks fail before any task
that could change the host, so nothing is installed here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import pytest

from testkit import ROOT
from testkit.playbook import run_playbook

PLAYBOOK = """
- name: push_monitor input checks
  hosts: all
  gather_facts: false
  roles:
    - role: push_monitor
"""


def run_role(tmp_path: Path, extra_vars: Dict[str, object]) -> dict:
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAYBOOK, encoding="utf-8")
    env = {
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_CACHE_PLUGIN": "ansible.builtin.memory",
        "ANSIBLE_CONFIG": str(tmp_path / "none.cfg"),
    }
    args = ["-i", "localhost,", "-c", "local", "--check"]
    done = run_playbook(playbook, args, extra_vars=extra_vars, env=env, cwd=tmp_path, timeout=120)
    result = json.loads(done.stdout)
    result["rc"] = done.returncode
    return result


def task_results(result: dict) -> List[tuple]:
    """(task name, host result) in execution order."""
    return [
        (task["task"]["name"], host_result)
        for play in result["plays"]
        for task in play["tasks"]
        for host_result in task["hosts"].values()
    ]


def first_failure(result: dict) -> tuple:
    return next((name, res) for name, res in task_results(result) if res.get("failed"))


@pytest.mark.parametrize(
    ("extra_vars", "variable"),
    [
        ({"push_monitor_interval": 0}, "push_monitor_interval"),
        ({"push_monitor_interval": -1}, "push_monitor_interval"),
        ({"push_monitor_interval": "often"}, "push_monitor_interval"),
        ({"push_monitor_install_method": "pip"}, "push_monitor_install_method"),
        ({"push_monitor_state": "gone"}, "push_monitor_state"),
        ({"push_monitor_pushgateway_url": "gateway:9091"}, "push_monitor_pushgateway_url"),
        ({"push_monitor_pushgateway_url": "http://"}, "push_monitor_pushgateway_url"),
        ({"push_monitor_pushgateway_url": "ftp://gw:9091"}, "push_monitor_pushgateway_url"),
        ({"push_monitor_top_n": -1}, "push_monitor_top_n"),
        ({"push_monitor_timeout": 5, "push_monitor_interval": 5}, "push_monitor_timeout"),
        (
            {"push_monitor_remote_write_send_interval": 2, "push_monitor_interval": 5},
            "push_monitor_remote_write_send_interval",
        ),
        ({"push_monitor_remote_write_send_interval": "soon"}, "push_monitor_remote_write_send_interval"),
        ({"push_monitor_job": ""}, "push_monitor_job"),
        ({"push_monitor_log_level": "LOUD"}, "push_monitor_log_level"),
        ({"push_monitor_pushgateway_password": "secret"}, "push_monitor_pushgateway_username"),
    ],
)
def test_bad_value_stops_before_the_host_changes(tmp_path: Path, extra_vars: dict, variable: str) -> None:
    result = run_role(tmp_path, extra_vars)
    assert result["rc"] != 0
    name, failure = first_failure(result)
    assert variable in failure.get("msg", ""), (name, failure)
    # Nothing ran that could change the host: the failure is in argument validation or a check.
    ran = [task for task, _ in task_results(result)]
    assert ran[-1] == name
    assert all("Validating arguments" in task or task.startswith("push_monitor : Check ") for task in ran), ran
    assert all(stats["changed"] == 0 for stats in result["stats"].values())


def test_two_bad_values_are_named_in_one_message(tmp_path: Path) -> None:
    result = run_role(tmp_path, {"push_monitor_top_n": -1, "push_monitor_job": ""})
    assert result["rc"] != 0
    name, failure = first_failure(result)
    assert name == "push_monitor : Check push_monitor_* values"
    assert "push_monitor_top_n must be" in failure["msg"]
    assert "push_monitor_job must be" in failure["msg"]


def test_good_values_pass_every_input_check(tmp_path: Path) -> None:
    """The control: valid values get past all checks (this machine may then fail on later,
    host-dependent preflight steps, which is not what this test is about)."""
    result = run_role(
        tmp_path, {"push_monitor_interval": 1, "push_monitor_pushgateway_url": "https://gw.example:9091/p"}
    )
    checks = [(name, res) for name, res in task_results(result) if name == "push_monitor : Check push_monitor_* values"]
    assert len(checks) == 1
    assert not checks[0][1].get("failed"), checks[0][1]
