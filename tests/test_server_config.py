"""The server configuration the roles render: promtool-valid, unit-tested rules, argument specs equal
to the defaults, and role variables that really reach the rendered files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from server_fixtures import FLEET_ALERTS, RULE_TESTS
from testkit import ROOT
from testkit.server import read_flags, render_server_config, run_promtool


@pytest.fixture(scope="module")
def default_render(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The roles' defaults as installed on a host, with the rules directory moved under the render so
    that promtool can follow rule_files."""
    workdir = tmp_path_factory.mktemp("default-render")
    no_overrides = workdir / "no-overrides.yml"
    no_overrides.write_text("---\n{}\n")
    dest = workdir / "out"
    return render_server_config(dest, {"prometheus_rules_dir": str(dest / "prometheus" / "rules")}, no_overrides)


def test_promtool_accepts_rendered_config_and_rules(default_render: Path) -> None:
    result = run_promtool("check", "config", str(default_render / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout
    rules = sorted((default_render / "prometheus" / "rules").glob("*.yml"))
    result = run_promtool("check", "rules", *map(str, rules))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_defaults_scrape_pushgateway_every_second_with_honor_labels(default_render: Path) -> None:
    config = yaml.safe_load((default_render / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "pushgateway"}
    gateway = jobs["pushgateway"]
    assert gateway["honor_labels"] is True
    assert gateway["scrape_interval"] == "1s"
    assert gateway["static_configs"] == [{"targets": ["localhost:9091"]}]
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["localhost:9090"]}]
    assert "remote_write" not in config and "external_labels" not in config["global"]


def test_rendered_default_flags(default_render: Path) -> None:
    assert read_flags(default_render / "flags" / "pushgateway.env") == [
        "--web.listen-address=:9091",
        "--persistence.file=/var/lib/prometheus/pushgateway.data",
        "--persistence.interval=5m",
        "--push.disable-consistency-check",
        "--web.enable-admin-api",
        "--log.level=info",
    ]
    assert read_flags(default_render / "flags" / "prometheus.env") == [
        "--config.file=/etc/prometheus/prometheus.yml",
        "--storage.tsdb.path=/var/lib/prometheus/metrics2/",
        "--storage.tsdb.retention.time=15d",
        "--web.listen-address=0.0.0.0:9090",
    ]


def test_every_alert_has_promtool_unit_tests_and_they_pass() -> None:
    rules_dir = ROOT / "server" / "compose" / "prometheus" / "rules"
    alerts = {
        rule["alert"]
        for path in rules_dir.glob("*.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert alerts == FLEET_ALERTS
    tested = yaml.safe_load(RULE_TESTS.read_text())
    firing_tests = {
        case["alertname"]
        for test in tested["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert firing_tests == alerts, "every alert needs a unit test in which it fires"
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_catch_a_changed_rule(tmp_path: Path) -> None:
    """The unit tests are not vacuous: a rule with a different factor makes them fail."""
    rules_dir = tmp_path / "server" / "compose" / "prometheus" / "rules"
    rules_dir.mkdir(parents=True)
    for path in (ROOT / "server" / "compose" / "prometheus" / "rules").glob("*.yml"):
        text = path.read_text().replace("3 * max by (job, device_serial)", "30 * max by (job, device_serial)")
        (rules_dir / path.name).write_text(text)
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    (tests_dir / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = run_promtool("test", "rules", str(tests_dir / RULE_TESTS.name))
    assert result.returncode != 0, result.stdout


def test_role_variables_reach_the_rendered_files(tmp_path: Path) -> None:
    # promtool checks that a scrape's CA file exists: the one the role would install.
    config_dir = tmp_path / "etc-prometheus"
    (config_dir / "tls").mkdir(parents=True)
    (config_dir / "tls" / "ca.crt").write_text("placeholder: promtool only checks that it exists\n")
    dest = render_server_config(
        tmp_path / "out",
        {
            "prometheus_rules_dir": str(tmp_path / "out" / "prometheus" / "rules"),
            "prometheus_alert_cpu_threshold_percent": 75,
            "prometheus_alert_memory_threshold_percent": 85,
            "prometheus_alert_device_silent_factor": 4,
            "prometheus_retention_time": "30d",
            "prometheus_retention_size": "20GB",
            "prometheus_external_labels": {"cluster": "eu-1", "replica": "a"},
            "prometheus_remote_write": [{"url": "http://mimir.example:9009/api/v1/push", "name": "mimir"}],
            "prometheus_pushgateway_targets": ["gw-a:9091", "gw-b:9091"],
            "prometheus_alertmanager_targets": ["am:9093"],
            "pushgateway_push_disable_consistency_check": False,
            "pushgateway_web_config_file": "/etc/prometheus/pushgateway-web.yml",
            "pushgateway_basic_auth_users": {"fleet-push": "push-password-1"},
            "prometheus_config_dir": str(config_dir),
            "prometheus_tls_cert_file": "/controller/server.crt",
            "prometheus_tls_ca_file": "/controller/ca.crt",
            "prometheus_basic_auth_users": {"fleet-read": "read-password-1"},
            "prometheus_pushgateway_scheme": "https",
            "prometheus_pushgateway_basic_auth": {"username": "fleet-read", "password": "read-password-1"},
        },
    )
    result = run_promtool("check", "config", str(dest / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((dest / "prometheus" / "prometheus.yml").read_text())
    assert config["global"]["external_labels"] == {"cluster": "eu-1", "replica": "a"}
    assert config["remote_write"] == [{"url": "http://mimir.example:9009/api/v1/push", "name": "mimir"}]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["am:9093"]
    gateway = next(job for job in config["scrape_configs"] if job["job_name"] == "pushgateway")
    assert gateway["static_configs"][0]["targets"] == ["gw-a:9091", "gw-b:9091"]
    assert gateway["scheme"] == "https"
    assert gateway["tls_config"] == {"ca_file": f"{config_dir}/tls/ca.crt"}
    assert gateway["basic_auth"] == {"username": "fleet-read", "password": "read-password-1"}
    itself = next(job for job in config["scrape_configs"] if job["job_name"] == "prometheus")
    assert (itself["scheme"], itself["tls_config"]) == ("https", {"ca_file": f"{config_dir}/tls/ca.crt"})
    assert itself["basic_auth"] == {"username": "fleet-read", "password": "read-password-1"}
    alerts = {
        rule["alert"]: rule
        for group in yaml.safe_load((dest / "prometheus" / "rules" / "fleet-alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    assert alerts["DeviceHighCpu"]["expr"].endswith("> 75")
    assert alerts["DeviceHighMemory"]["expr"].endswith("> 85")
    assert re.search(
        r"\b4 \* max by \(job, device_serial\) \(push_monitor_interval_seconds\)", alerts["DeviceSilent"]["expr"]
    )
    prometheus_flags = read_flags(dest / "flags" / "prometheus.env")
    assert "--storage.tsdb.retention.time=30d" in prometheus_flags
    assert "--storage.tsdb.retention.size=20GB" in prometheus_flags
    assert f"--web.config.file={config_dir}/web.yml" in prometheus_flags
    gateway_flags = read_flags(dest / "flags" / "pushgateway.env")
    assert "--push.disable-consistency-check" not in gateway_flags
    assert "--web.config.file=/etc/prometheus/pushgateway-web.yml" in gateway_flags
