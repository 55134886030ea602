"""Bad variables for the server roles stop the play in preflight, before any change, with a message
that names the variable. Runs only the roles' preflight (and argument spec) tasks, on localhost."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Dict

import pytest

from testkit import ROOT
from testkit.playbook import run_playbook

GOOD = {"grafana_admin_password": "a-long-secret"}
CASES = [
    ("grafana", {"grafana_admin_password": ""}, "grafana_admin_password"),
    ("grafana", {"grafana_admin_password": "admin"}, "grafana_admin_password"),
    ("pushgateway", {"pushgateway_install_method": "archive"}, "pushgateway_archive_sha256"),
    ("pushgateway", {"pushgateway_install_method": "snap"}, "pushgateway_install_method"),
    ("pushgateway", {"pushgateway_persistence_interval": "often"}, "pushgateway_persistence_interval"),
    ("prometheus", {"prometheus_retention_time": "two weeks"}, "prometheus_retention_time"),
    ("prometheus", {"prometheus_alert_cpu_threshold_percent": 150}, "prometheus_alert_cpu_threshold_percent"),
    ("prometheus", {"prometheus_remote_write": [{"name": "no-url"}]}, "prometheus_remote_write"),
    ("prometheus", {"prometheus_pushgateway_scheme": "ftp"}, "prometheus_pushgateway_scheme"),
    ("prometheus", {"prometheus_tls_cert_file": "/nonexistent/server.crt"}, "prometheus_tls_key_file"),
    ("prometheus", {"prometheus_basic_auth_users": {"reader": "short"}}, "prometheus_basic_auth_users"),
    ("pushgateway", {"pushgateway_tls_cert_file": "/nonexistent/server.crt"}, "pushgateway_tls_cert_file"),
    ("pushgateway", {"pushgateway_basic_auth_users": {"dev:ice": "long-enough-pw"}}, "pushgateway_basic_auth_users"),
    ("pushgateway", {"pushgateway_basic_auth_users": ["device"]}, "pushgateway_basic_auth_users"),
    ("grafana", {"grafana_datasource_basic_auth_user": "reader"}, "grafana_datasource_basic_auth_password"),
    ("grafana", {"grafana_datasource_ca_cert_file": "/nonexistent/ca.crt"}, "grafana_datasource_ca_cert_file"),
    ("fleet_pki", {"fleet_pki_push_username": "fleet:push"}, "fleet_pki_push_username"),
    ("fleet_pki", {"fleet_pki_push_password": "short"}, "fleet_pki_push_password"),
    ("fleet_pki", {"fleet_pki_ca_cert_file": "/nonexistent/ca.crt"}, "fleet_pki_server_cert_file"),
    ("fleet_pki", {"fleet_pki_server_valid_days": 3000}, "fleet_pki_server_valid_days"),
]


def run_preflight(tmp_path: Path, role: str, extra_vars: Dict[str, Any]) -> subprocess.CompletedProcess:
    playbook = tmp_path / "preflight.yml"
    playbook.write_text(
        f"- hosts: localhost\n  connection: local\n  gather_facts: true\n  roles:\n    - role: {role}\n"
    )
    return run_playbook(
        playbook,
        ["--tags", f"{role}_preflight"],
        extra_vars={**GOOD, **extra_vars},
        env={"ANSIBLE_ROLES_PATH": str(ROOT / "roles")},
        cwd=tmp_path,
        timeout=180,
    )


@pytest.mark.parametrize("role", ["pushgateway", "prometheus", "grafana", "fleet_pki"])
def test_defaults_pass_preflight(tmp_path: Path, role: str) -> None:
    result = run_preflight(tmp_path, role, {})
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize(("role", "bad", "named"), CASES, ids=[f"{case[0]}-{case[2]}" for case in CASES])
def test_bad_variable_stops_in_preflight_naming_it(tmp_path: Path, role: str, bad: Dict[str, Any], named: str) -> None:
    result = run_preflight(tmp_path, role, bad)
    assert result.returncode != 0, result.stdout[-3000:]
    failed = [line for line in result.stdout.splitlines() if "fatal:" in line or "ERROR" in line or "msg" in line]
    assert named in result.stdout, "\n".join(failed) or result.stdout[-3000:]
