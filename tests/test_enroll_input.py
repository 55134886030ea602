"""Bad input to scripts/enroll.sh stops it with one line and exit code 2, before it installs,
writes or clones anything (every case below fails in the argument checks, which come first)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENROLL = ROOT / "scripts" / "enroll.sh"
GOOD = ["--url", "https://git.example.net/fleet.git", "--group", "regular"]


def replace(args: List[str], option: str, value: str) -> List[str]:
    changed = list(args)
    changed[changed.index(option) + 1] = value
    return changed


CASES = {
    "no arguments": [],
    "no url": ["--group", "regular"],
    "no group": ["--url", "https://git.example.net/fleet.git"],
    "option without value": GOOD + ["--name"],
    "unknown option": GOOD + ["--colour", "red"],
    "group with a space": replace(GOOD, "--group", "regular servers"),
    "group with a slash": replace(GOOD, "--group", "../etc"),
    "name with a newline": GOOD + ["--name", "kiosk\n17"],
    "name starting with a dash": GOOD + ["--name", "-kiosk"],
    "branch with a space": GOOD + ["--branch", "main branch"],
    "absolute inventory": GOOD + ["--inventory", "/etc/ansible/hosts"],
    "inventory outside the repository": GOOD + ["--inventory", "../../hosts.yml"],
}


@pytest.mark.parametrize("args", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_and_exit_2(args: List[str]) -> None:
    result = subprocess.run(["bash", str(ENROLL), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("enroll: "), result.stderr
