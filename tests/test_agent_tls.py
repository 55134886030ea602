"""The agent against a real Pushgateway served with TLS and basic auth (--web.config.file)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from conftest import ROOT, Pushgateway, agent_command, agent_env, run_agent, wait_until
from testkit.pki import make_pki, web_config

pytestmark = pytest.mark.integration

USER, PASSWORD = "device", "correct horse battery staple"


@pytest.fixture(scope="module")
def secure_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushgateway]:
    workdir = Path(tmp_path_factory.mktemp("tls"))
    config, ca = web_config(workdir, "gateway", USER, PASSWORD)
    gateway = Pushgateway(workdir, [f"--web.config.file={config}"], auth=(USER, PASSWORD), ca_file=str(ca))
    gateway.start()
    gateway.workdir = workdir
    yield gateway
    gateway.stop()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def test_push_with_credentials_and_ca_arrives(secure_gateway: Pushgateway, password_file: Path) -> None:
    result = run_agent(
        "--once", "--pushgateway", secure_gateway.url, "--device-serial", "tls-device",
        "--username", USER, "--password-file", str(password_file), "--ca-file", secure_gateway.ca_file,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert secure_gateway.push_time("device-metrics", "tls-device") is not None


def test_password_from_the_environment_works_too(secure_gateway: Pushgateway) -> None:
    env = {
        "PUSHGATEWAY_USERNAME": USER,
        "PUSHGATEWAY_PASSWORD": PASSWORD,
        "PUSHGATEWAY_CA_FILE": secure_gateway.ca_file,
    }
    result = run_agent("--once", "--pushgateway", secure_gateway.url, "--device-serial", "env-device", env=env)
    assert result.returncode == 0, result.stderr


def test_push_without_credentials_gets_401(secure_gateway: Pushgateway) -> None:
    result = run_agent(
        "--once", "--pushgateway", secure_gateway.url, "--device-serial", "anon", "--ca-file", secure_gateway.ca_file
    )
    assert result.returncode == 1
    assert "authentication failed (HTTP 401)" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_ca_is_a_tls_error_not_a_crash(
    secure_gateway: Pushgateway, tmp_path: Path, password_file: Path
) -> None:
    other_ca, _, _ = make_pki(tmp_path, "other")
    result = run_agent(
        "--once", "--pushgateway", secure_gateway.url, "--device-serial", "x", "--username", USER,
        "--password-file", str(password_file), "--ca-file", str(other_ca),
    )  # fmt: skip
    assert result.returncode == 1
    assert "TLS error" in result.stderr and "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_password_logs_one_auth_error_and_keeps_retrying(secure_gateway: Pushgateway, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password")
    args = agent_command(
        "--pushgateway", secure_gateway.url, "--interval", "0.5", "--device-serial", "wrong-pw", "--username", USER,
        "--password-file", str(wrong), "--ca-file", secure_gateway.ca_file,
    )  # fmt: skip
    process = subprocess.Popen(args, env=agent_env(), stderr=subprocess.PIPE, text=True)
    lines: List[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        time.sleep(4)
        assert process.poll() is None, "a wrong password must not stop the agent"
        process.terminate()
        assert process.wait(10) == 0
        reader.join(5)
    finally:
        if process.poll() is None:
            process.kill()
    errors = [line for line in lines if "authentication failed" in line]
    assert len(errors) == 1, lines
    assert "Traceback" not in "".join(lines)
    assert PASSWORD not in "".join(lines) and "not the password" not in "".join(lines)
    wait_until(
        lambda: secure_gateway.group("device-metrics", "wrong-pw") is None, 1, message="no group for a rejected device"
    )


def test_janitor_logs_in_from_its_environment_and_verifies_the_ca(secure_gateway: Pushgateway) -> None:
    """The role's janitor unit passes the login in the environment (a root-only EnvironmentFile)."""
    janitor_path = str(ROOT / "files" / "pushgateway_janitor.py")
    serial = "janitor-tls-old"
    pushed = run_agent(
        "--once", "--pushgateway", secure_gateway.url, "--device-serial", serial, "--ca-file", secure_gateway.ca_file,
        env={"PUSHGATEWAY_USERNAME": USER, "PUSHGATEWAY_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    time.sleep(2.5)
    command = [sys.executable, janitor_path, "--pushgateway", secure_gateway.url, "--max-age", "2"]
    anonymous = subprocess.run(
        command + ["--ca-file", secure_gateway.ca_file], capture_output=True, text=True, timeout=60, env=agent_env()
    )
    assert anonymous.returncode == 1 and "401" in anonymous.stderr and "Traceback" not in anonymous.stderr
    logged_in = subprocess.run(
        command + ["--ca-file", secure_gateway.ca_file], capture_output=True, text=True, timeout=60,
        env=agent_env({"PUSHGATEWAY_USERNAME": USER, "PUSHGATEWAY_PASSWORD": PASSWORD}),
    )  # fmt: skip
    assert logged_in.returncode == 0, logged_in.stderr
    wait_until(lambda: secure_gateway.group("device-metrics", serial) is None, 5, message="stale group deleted")
