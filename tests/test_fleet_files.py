"""The fleet_files module and the probe's accounts, command and clock (roles/fleet_probe), through
real ansible-playbook runs on this machine: what fleet_files writes, the probe then reports up to date
(fleet_wanted | fleet_outdated is empty); reruns change nothing; check mode writes nothing; a failed
validate leaves the old file."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from testkit.playbook import run_local_play

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="writes files owned by root")

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: fleet_probe
  tasks:
    - name: Write
      fleet_files:
        files: "{{ fleet_files }}"
      register: fleet_written
      when: fleet_files | length > 0

    - name: Probe
      fleet_probe:
        paths: "{{ fleet_files | map(attribute='path') | list }}"
        users: "{{ fleet_users }}"
        groups: "{{ fleet_groups }}"
        command: "{{ fleet_command | default(omit) }}"
      register: fleet_probed

    - name: Compare
      ansible.builtin.set_fact:
        fleet_outdated_paths: "{{ fleet_files | fleet_wanted | fleet_outdated(fleet_probed.paths) }}"
"""


def play(tmp_path: Path, extra_vars: Dict[str, Any], *flags: str) -> Dict[str, Any]:
    done, tasks = run_local_play(tmp_path, PLAYBOOK, {"fleet_users": [], "fleet_groups": [], **extra_vars}, *flags)
    return {"rc": done.returncode, **tasks}


def entries(root: Path, content: str = "key = value\n") -> List[Dict[str, Any]]:
    return [
        {"path": str(root / "etc"), "state": "directory", "mode": "0750"},
        {"path": str(root / "etc" / "app.ini"), "content": content, "mode": "0640"},
        {"path": str(root / "etc" / "secret.env"), "content": "TOKEN=x\n", "mode": "0600"},
    ]


def test_written_files_are_what_the_probe_then_finds_up_to_date(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    first = play(tmp_path, {"fleet_files": entries(root)})
    assert first["rc"] == 0, first
    assert first["Write"]["changed"] is True
    assert first["Write"]["changed_paths"] == [entry["path"] for entry in entries(root)]
    assert first["Compare"]["ansible_facts"]["fleet_outdated_paths"] == []
    assert (root / "etc" / "app.ini").read_text() == "key = value\n"
    assert stat.S_IMODE(os.stat(root / "etc").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(root / "etc" / "secret.env").st_mode) == 0o600
    assert sorted(os.listdir(root / "etc")) == ["app.ini", "secret.env"]  # no temporary file left

    again = play(tmp_path, {"fleet_files": entries(root)})
    assert again["Write"]["changed"] is False and again["Write"]["changed_paths"] == []


def test_drifted_mode_is_repaired_and_changed_content_rewritten(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    play(tmp_path, {"fleet_files": entries(root)})
    os.chmod(root / "etc" / "secret.env", 0o644)
    changed = entries(root, content="key = other\n")
    result = play(tmp_path, {"fleet_files": changed})
    assert result["Write"]["changed_paths"] == [str(root / "etc" / "app.ini"), str(root / "etc" / "secret.env")]
    assert stat.S_IMODE(os.stat(root / "etc" / "secret.env").st_mode) == 0o600
    assert (root / "etc" / "app.ini").read_text() == "key = other\n"


def test_check_mode_reports_and_diffs_but_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    play(tmp_path, {"fleet_files": entries(root)})
    result = play(tmp_path, {"fleet_files": entries(root, content="key = new\n")}, "--check", "--diff")
    assert result["rc"] == 0
    assert result["Write"]["changed_paths"] == [str(root / "etc" / "app.ini")]
    assert result["Write"]["diff"] == [
        {
            "before_header": str(root / "etc" / "app.ini"),
            "after_header": str(root / "etc" / "app.ini"),
            "before": "key = value\n",
            "after": "key = new\n",
        }
    ]
    assert (root / "etc" / "app.ini").read_text() == "key = value\n"
    fresh = tmp_path / "fresh"
    result = play(tmp_path, {"fleet_files": entries(fresh)}, "--check")
    assert result["Write"]["changed_paths"] == [entry["path"] for entry in entries(fresh)]
    assert not fresh.exists()


def test_a_failed_validate_leaves_the_old_file(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    play(tmp_path, {"fleet_files": entries(root)})
    bad = [{**entries(root)[1], "content": "broken\n", "validate": "grep -q key %s"}]
    result = play(tmp_path, {"fleet_files": bad})
    assert result["rc"] != 0
    assert result["Write"]["failed"] is True
    assert "validation failed, file left as it was" in result["Write"]["msg"]
    assert (root / "etc" / "app.ini").read_text() == "key = value\n"
    assert sorted(os.listdir(root / "etc")) == ["app.ini", "secret.env"]
    good = [{**entries(root)[1], "content": "key = 2\n", "validate": "grep -q key %s"}]
    assert play(tmp_path, {"fleet_files": good})["Write"]["changed"] is True


def test_a_missing_parent_directory_is_one_clear_error(tmp_path: Path) -> None:
    orphan = [{"path": str(tmp_path / "no" / "such" / "dir" / "app.ini"), "content": "x\n", "mode": "0644"}]
    result = play(tmp_path, {"fleet_files": orphan})
    assert result["rc"] != 0
    assert result["Write"]["msg"] == f"{orphan[0]['path']}: No such file or directory"


def test_probe_reports_accounts_command_output_and_its_clock(tmp_path: Path) -> None:
    before = time.time()
    result = play(
        tmp_path,
        {
            "fleet_files": [],
            "fleet_users": ["root", "no-such-user-fleet"],
            "fleet_groups": ["root", "no-such-group-fleet"],
            "fleet_command": {"argv": [sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"],
                              "stdin": "serial"},
        },
    )  # fmt: skip
    probed = result["Probe"]
    assert result["rc"] == 0, probed
    assert probed["groups"] == {"root": {"gid": 0}}
    assert set(probed["users"]) == {"root"}
    assert probed["users"]["root"]["uid"] == 0 and probed["users"]["root"]["group"] == "root"
    assert probed["users"]["root"]["home"] == "/root"
    assert isinstance(probed["users"]["root"]["locked"], bool)
    assert probed["command"]["stdout"] == "SERIAL\n"
    assert before <= probed["clock"] <= time.time()


def test_probe_fails_with_the_command_s_error(tmp_path: Path) -> None:
    failing = {"argv": [sys.executable, "-c", "import sys; sys.exit('no serial here')"]}
    result = play(tmp_path, {"fleet_files": [], "fleet_command": failing})
    assert result["rc"] != 0
    assert result["Probe"]["failed"] is True
    assert "exited 1: no serial here" in result["Probe"]["msg"]
