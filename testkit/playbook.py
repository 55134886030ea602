"""ansible-playbook from the venv, run the way the tests, benchmarks and scripts need it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from testkit import ROOT

ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")
QUIET_ENV = {
    "ANSIBLE_LOCALHOST_WARNING": "False",
    "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
    "ANSIBLE_NOCOLOR": "1",
}


def run_playbook(
    playbook: Union[str, Path],
    args: Sequence[str] = (),
    *,
    extra_vars: Optional[Dict[str, Any]] = None,
    env: Optional[Dict[str, str]] = None,
    cwd: Union[str, Path] = ROOT,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Runs ansible-playbook; extra_vars go in as JSON (types kept), env on top of os.environ."""
    command = [ANSIBLE_PLAYBOOK, str(playbook), *args]
    if extra_vars:
        command += ["-e", json.dumps(extra_vars)]
    return subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, **QUIET_ENV, **(env or {})},
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_local_play(
    workdir: Path, playbook: str, extra_vars: Dict[str, Any], *args: str, timeout: float = 120
) -> Tuple[subprocess.CompletedProcess, Dict[str, Dict[str, Any]]]:
    """The playbook text, written to workdir, run on localhost over a local connection with this
    interpreter and the repository's roles; the run and its first play's results by task name."""
    (workdir / "play.yml").write_text(playbook)
    env = {"ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json"}
    local = ["-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}", *args]
    done = run_playbook(workdir / "play.yml", local, extra_vars=extra_vars, env=env, cwd=workdir, timeout=timeout)
    try:
        plays = json.loads(done.stdout)["plays"]
    except (ValueError, KeyError):
        raise AssertionError(
            f"ansible-playbook gave no results:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        ) from None
    return done, {task["task"]["name"]: task["hosts"]["localhost"] for task in plays[0]["tasks"]}
