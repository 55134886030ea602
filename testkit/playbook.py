"""ansible-playbook from the venv, run the way the tests, benchmarks and scripts need it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

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
