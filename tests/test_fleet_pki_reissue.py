"""The fleet_pki role on the controller: a rerun with the CA and the server certificate in place runs
no community.crypto module and changes no file, while a changed name list, a certificate within
fleet_pki_server_renew_days of its end and a new CA common name each issue the certificate again.
Real ansible-playbook runs of the role (connection local) into a temporary fleet_pki_dir."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List

import pytest

from testkit import ROOT
from testkit.playbook import run_playbook

PLAYBOOK = "- hosts: fleet-server\n  gather_facts: false\n  roles:\n    - role: fleet_pki\n"
INVENTORY = "fleet-server ansible_connection=local ansible_host=192.0.2.10\n"


def run_pki(workdir: Path, extra_vars: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Runs the role; returns (task, action, result) of every task result, in order."""
    (workdir / "play.yml").write_text(PLAYBOOK)
    (workdir / "hosts").write_text(INVENTORY)
    env = {"ANSIBLE_ROLES_PATH": str(ROOT / "roles"), "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json"}
    done = run_playbook(
        workdir / "play.yml",
        ["-i", str(workdir / "hosts")],
        extra_vars={"fleet_pki_dir": str(workdir / "pki"), **extra_vars},
        env=env,
        cwd=workdir,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [
        {"task": task["task"]["name"], "action": result.get("action", ""), **result}
        for play in json.loads(done.stdout)["plays"]
        for task in play["tasks"]
        for result in task["hosts"].values()
    ]


def ran_crypto(results: List[Dict[str, Any]]) -> List[str]:
    return [r["task"] for r in results if r["action"].startswith("community.crypto.") and not r.get("skipped")]


def certificate(path: Path) -> Dict[str, str]:
    text = subprocess.run(
        ["openssl", "x509", "-in", str(path), "-noout", "-serial", "-enddate", "-issuer", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = text.splitlines()
    return {
        "serial": next(line for line in lines if line.startswith("serial=")),
        "end": next(line for line in lines if line.startswith("notAfter=")).split("=", 1)[1],
        "issuer": next(line for line in lines if line.startswith("issuer=")),
        "names": lines[-1].strip(),
    }


def days_left(cert: Dict[str, str]) -> float:
    end = datetime.strptime(cert["end"], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=timezone.utc)
    return (end - datetime.now(timezone.utc)) / timedelta(days=1)


@pytest.fixture()
def issued(tmp_path: Path) -> Path:
    results = run_pki(tmp_path, {})
    assert "fleet_pki : Sign the server certificate with the CA" in ran_crypto(results)
    return tmp_path


def test_rerun_runs_no_crypto_module_and_changes_nothing(issued: Path) -> None:
    cert_file = issued / "pki" / "servers" / "fleet-server.crt"
    before = {path.name: path.read_bytes() for path in (issued / "pki").rglob("*") if path.is_file()}
    results = run_pki(issued, {})
    assert ran_crypto(results) == []
    assert [r["task"] for r in results if r.get("changed")] == []
    after = {path.name: path.read_bytes() for path in (issued / "pki").rglob("*") if path.is_file()}
    assert after == before
    assert "IP Address:192.0.2.10" in certificate(cert_file)["names"]


def test_a_new_name_issues_the_certificate_again(issued: Path) -> None:
    cert_file = issued / "pki" / "servers" / "fleet-server.crt"
    before = certificate(cert_file)
    results = run_pki(issued, {"fleet_pki_server_names": ["metrics.example.net"]})
    assert "fleet_pki : Sign the server certificate with the CA" in ran_crypto(results)
    after = certificate(cert_file)
    assert after["serial"] != before["serial"]
    assert "DNS:metrics.example.net" in after["names"]
    assert after["issuer"] == before["issuer"]


def test_a_certificate_due_for_renewal_is_issued_again(tmp_path: Path) -> None:
    cert_file = tmp_path / "pki" / "servers" / "fleet-server.crt"
    run_pki(tmp_path, {"fleet_pki_server_valid_days": 5, "fleet_pki_server_renew_days": 1})
    short = certificate(cert_file)
    assert days_left(short) < 6
    # Still valid for 5 days, but the defaults renew within 30 days of the end.
    results = run_pki(tmp_path, {})
    assert "fleet_pki : Sign the server certificate with the CA" in ran_crypto(results)
    renewed = certificate(cert_file)
    assert renewed["serial"] != short["serial"]
    assert days_left(renewed) > 800


def test_a_new_ca_name_makes_a_new_ca_and_signs_the_certificate_with_it(issued: Path) -> None:
    cert_file = issued / "pki" / "servers" / "fleet-server.crt"
    before = certificate(cert_file)
    results = run_pki(issued, {"fleet_pki_ca_common_name": "fleet test CA 2"})
    assert "fleet_pki : Self-sign the CA certificate" in ran_crypto(results)
    after = certificate(cert_file)
    assert after["serial"] != before["serial"]
    assert "fleet test CA 2" in after["issuer"]
    assert ran_crypto(run_pki(issued, {"fleet_pki_ca_common_name": "fleet test CA 2"})) == []
