"""docker-compose.yml cannot run here (no Docker engine, no registry): its structure is validated, and
its configuration is held equal to the roles' own render with their defaults."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml

from testkit import ROOT
from testkit.server import COMMITTED_RENDER, COMPOSE_VARS, read_flags, render_server_config

COMPOSE_FILE = ROOT / "docker-compose.yml"
PINNED_IMAGES = {
    "pushgateway": r"prom/pushgateway:v\d+\.\d+\.\d+",
    "alertmanager": r"prom/alertmanager:v\d+\.\d+\.\d+",
    "prometheus": r"prom/prometheus:v\d+\.\d+\.\d+",
    "grafana": r"grafana/grafana-oss:\d+\.\d+\.\d+",
}
# Published on the host's loopback only: plain HTTP without logins must not reach the network.
PORTS = {
    "pushgateway": "127.0.0.1:9091:9091",
    "alertmanager": "127.0.0.1:9093:9093",
    "prometheus": "127.0.0.1:9090:9090",
    "grafana": "127.0.0.1:3000:3000",
}
# The binaries the tests and Molecule run (Debian's packages), whose versions the images must carry.
TESTED_BINARIES = {
    "pushgateway": "prometheus-pushgateway",
    "alertmanager": "prometheus-alertmanager",
    "prometheus": "prometheus",
}


@pytest.fixture(scope="module")
def compose() -> Dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def fresh_render(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_server_config(tmp_path_factory.mktemp("compose-render") / "compose")


def role_default(role: str, name: str) -> Any:
    return yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())[name]


def compose_var(name: str) -> Any:
    return yaml.safe_load(COMPOSE_VARS.read_text())[name]


def bind_mounts(service: Dict[str, Any]) -> Dict[str, Path]:
    """container path -> host path of the service's bind mounts (sources starting with ./)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def test_committed_render_equals_a_fresh_render_of_the_roles(fresh_render: Path) -> None:
    committed = {p.relative_to(COMMITTED_RENDER): p.read_text() for p in COMMITTED_RENDER.rglob("*") if p.is_file()}
    fresh = {p.relative_to(fresh_render): p.read_text() for p in fresh_render.rglob("*") if p.is_file()}
    assert sorted(committed) == sorted(fresh)
    stale = [str(path) for path in fresh if committed[path] != fresh[path]]
    assert not stale, f"server/compose/ is stale ({stale}): run `make server-config`"


def test_services_images_ports_healthchecks_restart(compose: Dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"pushgateway", "alertmanager", "prometheus", "grafana"}
    for name, service in services.items():
        assert re.fullmatch(PINNED_IMAGES[name], service["image"]), f"{name}: image not pinned: {service['image']}"
        assert service["ports"] == [PORTS[name]]
        assert service["restart"] in {"unless-stopped", "always"}
        health = service["healthcheck"]
        assert health["test"][0] == "CMD" and health["retries"] >= 1
        port = PORTS[name].split(":")[-1]
        assert any(f"localhost:{port}/" in part for part in health["test"]), f"{name}: healthcheck misses its port"


def test_named_volumes_are_declared_and_used(compose: Dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = {
        volume.split(":")[0]
        for service in compose["services"].values()
        for volume in service.get("volumes", [])
        if not volume.startswith(("./", "/"))
    }
    assert used == declared == {"pushgateway-data", "alertmanager-data", "prometheus-data", "grafana-data"}
    volumes = {s: [v.split(":")[:2] for v in compose["services"][s]["volumes"]] for s in compose["services"]}
    assert ["pushgateway-data", "/pushgateway"] in volumes["pushgateway"]
    assert ["prometheus-data", compose_var("prometheus_storage_path")] in volumes["prometheus"]
    assert ["alertmanager-data", compose_var("alertmanager_storage_path")] in volumes["alertmanager"]
    assert ["grafana-data", "/var/lib/grafana"] in volumes["grafana"]


def test_every_mounted_path_exists(compose: Dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert ROOT in source.parents, f"{name}: {source} is outside the repository"


def test_pushgateway_flags_equal_the_role_defaults(compose: Dict[str, Any], fresh_render: Path) -> None:
    assert compose["services"]["pushgateway"]["command"] == read_flags(fresh_render / "flags" / "pushgateway.env")
    persistence = compose_var("pushgateway_persistence_file")
    assert Path(persistence).parent == Path("/pushgateway"), "the persistence file must live on the named volume"


def test_prometheus_flags_equal_the_role_defaults(compose: Dict[str, Any], fresh_render: Path) -> None:
    flags = read_flags(fresh_render / "flags" / "prometheus.env")
    assert compose["services"]["prometheus"]["command"] == flags
    assert f"--storage.tsdb.retention.time={role_default('prometheus', 'prometheus_retention_time')}" in flags


def test_alertmanager_flags_and_config_equal_the_role_defaults(compose: Dict[str, Any], fresh_render: Path) -> None:
    alertmanager = compose["services"]["alertmanager"]
    assert alertmanager["command"] == read_flags(fresh_render / "flags" / "alertmanager.env")
    mounts = bind_mounts(alertmanager)
    config_dir = compose_var("alertmanager_config_dir")
    assert mounts[f"{config_dir}/alertmanager.yml"] == COMMITTED_RENDER / "alertmanager" / "alertmanager.yml"
    config = yaml.safe_load((COMMITTED_RENDER / "prometheus" / "prometheus.yml").read_text())
    [alertmanagers] = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_prometheus_mounts_the_roles_render(compose: Dict[str, Any]) -> None:
    mounts = bind_mounts(compose["services"]["prometheus"])
    config_dir = compose_var("prometheus_config_dir")
    assert mounts[f"{config_dir}/prometheus.yml"] == COMMITTED_RENDER / "prometheus" / "prometheus.yml"
    assert mounts[compose_var("prometheus_rules_dir")] == COMMITTED_RENDER / "prometheus" / "rules"
    config = yaml.safe_load((COMMITTED_RENDER / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == [f"{compose_var('prometheus_rules_dir')}/*.yml"]
    gateway = next(job for job in config["scrape_configs"] if job["job_name"] == "pushgateway")
    assert gateway["static_configs"][0]["targets"] == ["pushgateway:9091"]


def test_grafana_mounts_the_provisioning_and_dashboards(compose: Dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = role_default("grafana", "grafana_provisioning_dir")
    assert mounts[f"{provisioning}/datasources"] == COMMITTED_RENDER / "grafana" / "provisioning" / "datasources"
    assert mounts[f"{provisioning}/dashboards"] == COMMITTED_RENDER / "grafana" / "provisioning" / "dashboards"
    dashboards_dir = role_default("grafana", "grafana_dashboards_dir")
    assert mounts[dashboards_dir] == ROOT / "roles" / "grafana" / "files" / "dashboards"
    provider = yaml.safe_load((mounts[f"{provisioning}/dashboards"] / "fleet-monitor.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == dashboards_dir
    datasource = yaml.safe_load((mounts[f"{provisioning}/datasources"] / "fleet-monitor.yml").read_text())
    assert datasource["datasources"][0]["uid"] == role_default("grafana", "grafana_datasource_uid")
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    env = grafana["environment"]
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{dashboards_dir}/fleet.json"
    # No default password in compose: it refuses to start without one.
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_startup_order_waits_for_health(compose: Dict[str, Any]) -> None:
    services = compose["services"]
    assert services["prometheus"]["depends_on"] == {
        "pushgateway": {"condition": "service_healthy"},
        "alertmanager": {"condition": "service_healthy"},
    }
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


def installed_version(binary: str) -> str:
    """major.minor.patch of an installed Prometheus-project binary (`NAME, version X.Y.Z+ds ...`)."""
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    match = re.search(r"version (\d+\.\d+\.\d+)", output.stdout + output.stderr)
    assert match, f"{binary} --version: {output.stdout}{output.stderr}"
    return match.group(1)


@pytest.mark.parametrize("service", sorted(TESTED_BINARIES))
def test_images_carry_the_tested_versions(compose: Dict[str, Any], service: str) -> None:
    if shutil.which(TESTED_BINARIES[service]) is None:
        pytest.fail(f"{TESTED_BINARIES[service]} is not installed: run `make host`")
    image_version = compose["services"][service]["image"].rsplit(":v", 1)[1]
    assert image_version == installed_version(TESTED_BINARIES[service])


def test_no_port_is_published_beyond_localhost(compose: Dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is reachable from the network"
