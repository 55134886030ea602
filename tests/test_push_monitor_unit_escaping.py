"""The role's unit and environment-file templates carry odd serials, jobs and secrets exactly.

Renders roles/push_monitor/templates/*.j2 with a real ansible-playbook run (connection local) and
reads the values back the way systemd does: `Environment=` lines expand specifiers (`%%` -> `%`)
and then unquote with C escapes (systemd.syntax(7)); the EnvironmentFile's double-quoted values
unescape only backslash, double quote, backtick and dollar (systemd.exec(7), "EnvironmentFile=").
When the host has systemd-analyze, `systemd-analyze verify` must also accept the rendered unit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from testkit import ROOT
from testkit.playbook import run_playbook

ROLE = ROOT / "roles" / "push_monitor"

ODD_VALUES = [
    "plain-0001",
    'with "double" quotes',
    "with 'single' quotes",
    "back\\slash and trailing\\",
    "\\n is not a newline",
    "50% of %n %H %%",
    "$HOME ${PATH} $$",
    "`backticks` ; semicolon & ampersand | pipe",
    "  inner  spaces  ",
    "ünïcödé 設備 🛰",
    "=equals=at=ends=",
    "#hash not a comment",
]

PLAYBOOK = """
- name: Render the push_monitor templates
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - {role}/defaults/main.yml
    - {role}/vars/main.yml
  tasks:
    - name: Render the unit
      ansible.builtin.template:
        src: {role}/templates/push-monitor.service.j2
        dest: "{{{{ fleet_out }}}}/unit-{{{{ index }}}}.service"
        mode: "0644"
      loop: "{{{{ fleet_cases }}}}"
      loop_control:
        index_var: index
      vars:
        __push_monitor_serial: "{{{{ item }}}}"
        __push_monitor_serial_source: test
        push_monitor_job: "{{{{ item }}}}"
        push_monitor_pushgateway_ca_file: "{{{{ item }}}}"
        __push_monitor_agent_path: {agent}

    - name: Render the environment file
      ansible.builtin.template:
        src: {role}/templates/push-monitor.env.j2
        dest: "{{{{ fleet_out }}}}/env-{{{{ index }}}}"
        mode: "0600"
      loop: "{{{{ fleet_cases }}}}"
      loop_control:
        index_var: index
      vars:
        push_monitor_pushgateway_username: "{{{{ item }}}}"
        push_monitor_pushgateway_password: "{{{{ item }}}}"
"""


def systemd_environment_value(rvalue: str) -> Dict[str, str]:
    """One `Environment=` right-hand side as systemd reads it: specifiers first, then words."""
    expanded = []
    i = 0
    while i < len(rvalue):
        if rvalue[i] == "%":
            assert rvalue[i + 1 : i + 2] == "%", f"unescaped specifier in {rvalue!r}"
            expanded.append("%")
            i += 2
        else:
            expanded.append(rvalue[i])
            i += 1
    text = "".join(expanded)
    assert text.startswith('"') and text.endswith('"'), f"not one quoted word: {rvalue!r}"
    word: List[str] = []
    i = 1
    while i < len(text) - 1:
        char = text[i]
        assert char != '"', f"unescaped quote inside {rvalue!r}"
        if char == "\\":
            escaped = text[i + 1]
            assert escaped in '\\"', f"unexpected escape \\{escaped} in {rvalue!r}"
            word.append(escaped)
            i += 2
        else:
            word.append(char)
            i += 1
    name, _, value = "".join(word).partition("=")
    return {name: value}


def unit_environment(unit: str) -> Dict[str, str]:
    environment: Dict[str, str] = {}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            environment.update(systemd_environment_value(line[len("Environment=") :]))
    return environment


def env_file_values(text: str) -> Dict[str, str]:
    """Double-quoted KEY="value" lines as systemd's EnvironmentFile= parser reads them."""
    values: Dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, raw = line.partition("=")
        assert raw.startswith('"') and raw.endswith('"') and len(raw) >= 2, f"not quoted: {line!r}"
        value: List[str] = []
        i = 1
        while i < len(raw) - 1:
            char = raw[i]
            assert char != '"', f"unescaped quote inside {line!r}"
            if char == "\\" and raw[i + 1] in '"\\`$':
                value.append(raw[i + 1])
                i += 2
            else:
                # systemd keeps any other backslash literally; the template must not leave one
                # before a character it would swallow.
                value.append(char)
                i += 1
        values[key] = "".join(value)
    return values


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("unit-escaping")
    out = workdir / "out"
    out.mkdir()
    playbook = workdir / "render.yml"
    playbook.write_text(PLAYBOOK.format(role=ROLE, agent=ROOT / "files" / "push_monitor.py"))
    extra = {"fleet_out": str(out), "fleet_cases": ODD_VALUES, "ansible_python_interpreter": sys.executable}
    result = run_playbook(playbook, ["-i", "localhost,"], extra_vars=extra, cwd=workdir, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.mark.parametrize("index", range(len(ODD_VALUES)))
def test_unit_environment_round_trips(rendered: Path, index: int) -> None:
    expected = ODD_VALUES[index]
    environment = unit_environment((rendered / f"unit-{index}.service").read_text())
    assert environment["DEVICE_SERIAL"] == expected
    assert environment["DEVICE_JOB"] == expected
    assert environment["PUSHGATEWAY_CA_FILE"] == expected
    assert environment["PUSH_INTERVAL"] == "5"


@pytest.mark.parametrize("index", range(len(ODD_VALUES)))
def test_environment_file_round_trips(rendered: Path, index: int) -> None:
    expected = ODD_VALUES[index]
    values = env_file_values((rendered / f"env-{index}").read_text())
    assert values == {"PUSHGATEWAY_USERNAME": expected, "PUSHGATEWAY_PASSWORD": expected}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_accepts_every_rendered_unit(rendered: Path) -> None:
    for index in range(len(ODD_VALUES)):
        unit = rendered / f"unit-{index}.service"
        named = unit.with_name(f"push-monitor-{index}.service")
        shutil.copy(unit, named)
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(named)], capture_output=True, text=True, timeout=60
        )
        complaints = [
            line for line in result.stderr.splitlines() if named.name in line or "Environment" in line or "%" in line
        ]
        assert result.returncode == 0 and not complaints, f"{ODD_VALUES[index]!r}: {result.stderr}"
