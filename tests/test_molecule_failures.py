"""scripts/molecule_failures.py on real ansible-playbook output, as Molecule logs it (coloured and
framed with its border): the failed tasks with their msg, nothing of an ignored failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT
from testkit.playbook import run_playbook

SCRIPT = ROOT / "scripts" / "molecule_failures.py"

PLAYBOOK = """
- name: Checks
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Fail and be ignored
      ansible.builtin.command: "false"
      ignore_errors: true

    - name: Check each number
      ansible.builtin.assert:
        that: [item < 2]
        fail_msg: "number {{ item }} is too big"
      loop: [1, 2, 3]
"""


def summarize(log: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(log), *args], capture_output=True, text=True, check=False, timeout=30
    )


def molecule_log(tmp_path: Path) -> Path:
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    done = run_playbook(
        tmp_path / "play.yml",
        ["-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}"],
        env={"ANSIBLE_NOCOLOR": "0", "ANSIBLE_FORCE_COLOR": "1"},
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    log = tmp_path / "molecule.log"
    framed = "".join(f"  \x1b[2m\u2502\x1b[0m {line}\n" for line in done.stdout.splitlines())
    log.write_text(framed + "ERROR    devices \u279c verify: Executed: Failed\n")
    return log


def test_summary_names_the_failed_task_its_items_and_msgs(tmp_path: Path) -> None:
    done = summarize(molecule_log(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"== failed tasks (full output: {tmp_path / 'molecule.log'})"
    assert lines[1:] == [
        "PLAY [Checks] TASK [Check each number]",
        "  failed: [localhost] (item=2)",
        "    msg: number 2 is too big",
        "  failed: [localhost] (item=3)",
        "    msg: number 3 is too big",
        "ERROR    devices \u279c verify: Executed: Failed",
    ]


def test_summary_is_cut_to_max_lines(tmp_path: Path) -> None:
    lines = summarize(molecule_log(tmp_path), "--max-lines", "3").stdout.splitlines()
    assert lines[1:] == [
        "PLAY [Checks] TASK [Check each number]",
        "  failed: [localhost] (item=2)",
        "... 4 more lines in the log",
    ]


def test_missing_log_is_one_line_and_exit_2(tmp_path: Path) -> None:
    absent = tmp_path / "absent.log"
    done = summarize(absent)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"molecule_failures: cannot read {absent}: No such file or directory"]
