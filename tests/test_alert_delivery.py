"""Alerts reach a person: a silent device's DeviceSilent goes from a real Prometheus through a real
Alertmanager (Debian's binaries, configured by the roles' rendered files) to a webhook receiver, an
HTTP server this test runs on loopback; a fleet-wide outage is one group, one notification."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, List, Set, Tuple

import pytest

from server_fixtures import FleetServer, fleet_server
from testkit.process import free_port, wait_until
from testkit.server import Alertmanager

pytestmark = pytest.mark.integration

DEVICES = [("alert-critical-1", "critical-servers", 1.0), ("alert-regular-1", "regular-servers", 1.0)]


class WebhookReceiver:
    """Keeps the JSON body of every notification POSTed to it."""

    def __init__(self) -> None:
        self.notifications: List[Dict[str, Any]] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def firing_serials(self, alertname: str) -> List[Set[str]]:
        """For each notification about alertname: the device serials of its firing alerts."""
        return [
            {alert["labels"]["device_serial"] for alert in n["alerts"] if alert["status"] == "firing"}
            for n in list(self.notifications)
            if n["groupLabels"].get("alertname") == alertname
        ]


@pytest.fixture(scope="module")
def delivery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[FleetServer, Alertmanager, WebhookReceiver]]:
    workdir = tmp_path_factory.mktemp("alert-delivery")
    receiver = WebhookReceiver()
    receiver.thread.start()
    alertmanager_port = free_port()
    overrides = {
        "prometheus_self_target": "127.0.0.1:9",
        "prometheus_evaluation_interval": "1s",
        "prometheus_alertmanager_targets": [f"127.0.0.1:{alertmanager_port}"],
        "alertmanager_receivers": [{"name": "test-webhook", "webhook_configs": [{"url": receiver.url}]}],
        # The roles' grouping, on the test's clock.
        "alertmanager_group_wait": "1s",
        "alertmanager_group_interval": "1s",
    }
    with fleet_server(workdir, DEVICES, overrides) as server:
        alertmanager = Alertmanager(workdir, server.render, alertmanager_port)
        alertmanager.start()
        try:
            yield server, alertmanager, receiver
        finally:
            alertmanager.stop()
            receiver.server.shutdown()


def test_the_rendered_config_groups_by_alert_name(delivery: Tuple[FleetServer, Alertmanager, WebhookReceiver]) -> None:
    server, _, receiver = delivery
    config = (server.render / "alertmanager" / "alertmanager.yml").read_text()
    assert '"test-webhook"' in config and receiver.url in config
    assert 'group_by: ["alertname"]' in config


def test_silent_devices_reach_the_webhook_as_one_group(
    delivery: Tuple[FleetServer, Alertmanager, WebhookReceiver],
) -> None:
    server, alertmanager, receiver = delivery
    wait_until(
        lambda: len(server.prometheus.instant("job_device_serial:push_age:seconds")) == len(DEVICES),
        30,
        0.5,
        message="every device pushing",
    )
    wait_until(
        lambda: server.prometheus.api("alertmanagers")["activeAlertmanagers"], 30, 0.5, message="alertmanager found"
    )
    assert receiver.firing_serials("DeviceSilent") == []
    first_serial = DEVICES[0][0]
    server.agents[0].stop()
    wait_until(lambda: receiver.firing_serials("DeviceSilent"), 60, 0.5, message="a DeviceSilent notification")
    first = next(n for n in receiver.notifications if n["groupLabels"].get("alertname") == "DeviceSilent")
    assert first["receiver"] == "test-webhook" and first["status"] == "firing"
    assert {alert["labels"]["device_serial"] for alert in first["alerts"]} == {first_serial}
    assert first["alerts"][0]["labels"]["job"] == DEVICES[0][1]
    assert first_serial in first["alerts"][0]["annotations"]["summary"]

    # The rest of the fleet goes silent: still one group, and a notification names every device.
    everyone = {serial for serial, _, _ in DEVICES}
    for agent in server.agents[1:]:
        agent.stop()
    wait_until(lambda: everyone in receiver.firing_serials("DeviceSilent"), 60, 0.5, message="one notification for all")
    groups = [g for g in alertmanager.alert_groups() if g["labels"].get("alertname") == "DeviceSilent"]
    assert len(groups) == 1
    assert {alert["labels"]["device_serial"] for alert in groups[0]["alerts"]} == everyone
