"""The fleet_probe module and the fleet_state filters (roles/fleet_probe), through a real
ansible-playbook run on this machine: what the module reports for files, directories, missing paths
and Debian packages, and which paths fleet_outdated then names for writing."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
from pathlib import Path
from typing import Any, Dict

import pytest

from testkit.playbook import run_local_play

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: fleet_probe
  tasks:
    - name: Probe
      fleet_probe:
        paths: "{{ fleet_paths }}"
        packages: "{{ fleet_packages }}"
      register: fleet_probe_result

    - name: Compare
      ansible.builtin.set_fact:
        fleet_outdated_paths: "{{ fleet_wanted | fleet_outdated(fleet_probe_result.paths) }}"
        fleet_state_of_content: "{{ fleet_content | fleet_file_state('0640', 'root', 'root') }}"
"""


def probe(tmp_path: Path, extra_vars: Dict[str, Any], check: bool = False) -> Dict[str, Any]:
    done, tasks = run_local_play(tmp_path, PLAYBOOK, extra_vars, *(["--check"] if check else []))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"probe": tasks["Probe"], **tasks["Compare"]["ansible_facts"]}


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "conf").mkdir(parents=True)
    os.chmod(root / "conf", 0o750)
    (root / "conf" / "app.ini").write_bytes(b"key = value\n")
    os.chmod(root / "conf" / "app.ini", 0o640)
    return root


def test_reports_type_mode_owner_group_and_sha1_of_existing_paths_only(tmp_path: Path, tree: Path) -> None:
    paths = [str(tree / "conf"), str(tree / "conf" / "app.ini"), str(tree / "missing")]
    result = probe(tmp_path, {"fleet_paths": paths, "fleet_packages": [], "fleet_wanted": {}, "fleet_content": ""})
    owner, group = pwd.getpwuid(os.getuid())[0], grp.getgrgid(os.getgid())[0]
    assert result["probe"]["paths"] == {
        paths[0]: {"type": "directory", "mode": "0750", "owner": owner, "group": group},
        paths[1]: {
            "type": "file",
            "mode": "0640",
            "owner": owner,
            "group": group,
            "sha1": hashlib.sha1(b"key = value\n").hexdigest(),
        },
    }
    assert result["probe"]["changed"] is False


def test_outdated_names_what_differs_and_what_must_go(tmp_path: Path, tree: Path) -> None:
    conf, app = str(tree / "conf"), str(tree / "conf" / "app.ini")
    owner, group = pwd.getpwuid(os.getuid())[0], grp.getgrgid(os.getgid())[0]
    up_to_date = {
        "type": "file",
        "mode": "0640",
        "owner": owner,
        "group": group,
        "sha1": hashlib.sha1(b"key = value\n").hexdigest(),
    }
    wanted = {
        conf: {"type": "directory", "mode": "0755", "owner": owner, "group": group},  # mode drifted
        app: up_to_date,
        str(tree / "new.ini"): up_to_date,  # missing
        str(tree / "conf" / "app.ini.bak"): {"type": "absent"},  # absent as wanted
    }
    result = probe(
        tmp_path,
        {"fleet_paths": list(wanted), "fleet_packages": [], "fleet_wanted": wanted, "fleet_content": "key = value\n"},
    )
    assert result["fleet_outdated_paths"] == [conf, str(tree / "new.ini")]
    (tree / "conf" / "app.ini.bak").write_text("old")
    result = probe(
        tmp_path,
        {"fleet_paths": list(wanted), "fleet_packages": [], "fleet_wanted": wanted, "fleet_content": "key = value\n"},
    )
    assert result["fleet_outdated_paths"] == [conf, str(tree / "new.ini"), str(tree / "conf" / "app.ini.bak")]
    assert result["fleet_state_of_content"] == {**up_to_date, "owner": "root", "group": "root"}


@pytest.mark.skipif(not Path("/usr/bin/dpkg-query").exists(), reason="needs dpkg (Debian)")
def test_installed_packages_in_check_mode_too(tmp_path: Path) -> None:
    packages = ["no-such-package-fleet", "dpkg", "also-not-there-fleet"]
    result = probe(
        tmp_path, {"fleet_paths": [], "fleet_packages": packages, "fleet_wanted": {}, "fleet_content": ""}, check=True
    )
    assert result["probe"]["installed_packages"] == ["dpkg"]


STAGES_PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: fleet_probe
  tasks:
    - name: Judge
      ansible.builtin.set_fact:
        fleet_judged: >-
          {{ ['install', 'configure'] | map('fleet_stage_selected', 'demo', ansible_run_tags, ansible_skip_tags)
          | list }}
      tags: [always]
    - name: install
      ansible.builtin.set_fact:
        fleet_ran: install
      tags: [demo, demo_install, install]
    - name: configure
      ansible.builtin.set_fact:
        fleet_ran: configure
      tags: [demo, demo_configure, configure]
"""


@pytest.mark.parametrize(
    "tag_args",
    [
        [],
        ["--tags", "configure"],
        ["--tags", "demo_install"],
        ["--tags", "demo"],
        ["--tags", "tagged"],
        ["--tags", "untagged"],
        ["--skip-tags", "install"],
        ["--skip-tags", "demo"],
        ["--tags", "install,configure", "--skip-tags", "demo_configure"],
    ],
)
def test_stage_selection_agrees_with_the_stages_ansible_runs(tmp_path: Path, tag_args: list) -> None:
    done, tasks = run_local_play(tmp_path, STAGES_PLAYBOOK, {}, *tag_args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    judged = tasks["Judge"]["ansible_facts"]["fleet_judged"]
    assert judged == [stage in tasks for stage in ("install", "configure")], (judged, sorted(tasks))
