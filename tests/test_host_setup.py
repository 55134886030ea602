"""The host capabilities the lab and the scenarios need come from scripts/setup-host.sh itself, not
from whatever an earlier machine happened to have: every package podman relies on here is in its
list, and the containers.conf it writes is, alone, what gives --internal networks DNS."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from conftest import ROOT

SETUP = ROOT / "scripts" / "setup-host.sh"
CHECK_NETWORK = ROOT / "scripts" / "check-network.sh"

pytestmark = pytest.mark.skipif(shutil.which("podman") is None, reason="podman is installed by make host")


def run(argv: List[str], env: Dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def setup_output(flag: str) -> str:
    return run(["bash", str(SETUP), flag]).stdout


def podman_info(field: str, env: Dict[str, str]) -> str:
    return run(["podman", "info", "--format", "{{" + field + "}}"], env).stdout.strip()


def package_of(path: str) -> str:
    """The Debian package that installed path (dpkg -S), following /usr merge links."""
    real = os.path.realpath(path)
    for candidate in dict.fromkeys([path, real, real.replace("/usr/", "/", 1)]):
        result = run(["dpkg", "-S", candidate])
        if result.returncode == 0:
            return result.stdout.split(":", 1)[0]
    raise AssertionError(f"{path} belongs to no Debian package")


@pytest.fixture
def project_conf(tmp_path: Path) -> Dict[str, str]:
    """podman reading only the containers.conf that setup-host.sh writes."""
    conf = tmp_path / "containers.conf"
    conf.write_text(setup_output("--print-containers-conf"))
    return {"CONTAINERS_CONF": str(conf)}


@pytest.fixture
def network_name() -> Iterator[str]:
    name = f"fleet-test-{os.getpid()}"
    yield name
    run(["podman", "network", "rm", "--force", name])


def test_check_reports_every_capability_present() -> None:
    result = run(["bash", str(SETUP), "--check"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MISSING" not in result.stdout
    assert result.stdout.count("present") >= 6


def test_every_binary_podman_uses_is_installed_by_the_setup_script(project_conf: Dict[str, str]) -> None:
    packages = set(setup_output("--print-packages").split())
    binaries = {
        "podman": shutil.which("podman"),
        "OCI runtime": podman_info(".Host.OCIRuntime.Path", project_conf),
        "netavark": "/usr/lib/podman/netavark",
        "aardvark-dns": "/usr/lib/podman/aardvark-dns",
        "iptables (netavark's NAT rules)": shutil.which("iptables"),
        "mmdebstrap (image builds)": shutil.which("mmdebstrap"),
    }
    for what, path in binaries.items():
        assert path and Path(path).exists(), f"{what} is not installed"
        assert package_of(path) in packages, f"{what} ({path}) comes from {package_of(path)}, not from setup-host.sh"


def test_the_written_conf_alone_selects_netavark_runc_and_dns_on_internal_networks(
    project_conf: Dict[str, str], network_name: str
) -> None:
    assert podman_info(".Host.NetworkBackend", project_conf) == "netavark"
    assert podman_info(".Host.OCIRuntime.Name", project_conf) == "runc"
    created = run(["podman", "network", "create", "--internal", network_name], project_conf)
    assert created.returncode == 0, created.stderr
    inspected = run(["podman", "network", "inspect", "--format", "{{.DNSEnabled}}", network_name], project_conf)
    assert inspected.stdout.strip() == "true"


def test_check_names_a_backend_without_internal_dns(tmp_path: Path) -> None:
    conf = tmp_path / "containers.conf"
    conf.write_text('[engine]\nruntime = "runc"\n\n[network]\nnetwork_backend = "cni"\n')
    result = run(["bash", str(SETUP), "--check"], {"CONTAINERS_CONF": str(conf)})
    assert result.returncode == 1
    assert "MISSING  podman network backend netavark: podman uses 'cni'" in result.stdout


def test_setup_recreates_a_project_network_without_dns(network_name: str) -> None:
    assert run(["podman", "network", "create", "--disable-dns", network_name]).returncode == 0
    result = run(["bash", str(SETUP)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"network {network_name} has no DNS: removing it" in result.stdout
    assert run(["podman", "network", "exists", network_name]).returncode == 1


def test_network_check_fails_in_one_line_on_a_network_without_dns(network_name: str) -> None:
    assert run(["podman", "network", "create", "--disable-dns", network_name]).returncode == 0
    result = run(["bash", str(CHECK_NETWORK), network_name, "fleet-a", "fleet-b"])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"network {network_name} has no DNS") and "scripts/setup-host.sh" in lines[0]
