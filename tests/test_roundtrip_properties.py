"""Property tests: whatever serial, job or app name a device has, the real Pushgateway accepts the
push and gives back exactly the values that were sent."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import push_monitor as pm
from conftest import Pushgateway, wait_until

pytestmark = pytest.mark.integration

# Any Unicode text except lone surrogates (not encodable as UTF-8, so no process or serial has them).
label_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=400)
awkward = st.sampled_from(
    ['"quoted"', "back\\slash", "new\nline", "a/b/c", " lead and trail ", "设备", "x" * 2000, "=", "@base64", ".", ".."]
)
values = st.one_of(label_text, awkward).filter(lambda s: s.strip() != "")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushgateway]:
    gw = Pushgateway(Path(tmp_path_factory.mktemp("roundtrip")))
    gw.start()
    yield gw
    gw.stop()


def push(gateway: Pushgateway, job: str, serial: str, app: str, hostname: str = "property-host") -> None:
    """One push of a real snapshot whose app and interface names (and hostname) are the given value."""
    config = pm.Config(pushgateway_url=gateway.url, job=job, timeout=5)
    agent = pm.Agent(config, serial, hostname=hostname)
    snapshot = agent.sampler.sample()
    counters = next(iter(snapshot.network.values()))
    odd = snapshot._replace(apps=[pm.AppUsage(app, 12.5, 3 * 1048576)], network={app: counters})
    try:
        agent.client.push(agent.exposition.render(odd))
    finally:
        agent.client.close()


@settings(
    max_examples=int(os.environ.get("ROUNDTRIP_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(job=values, serial=values, app=values, hostname=values)
def test_every_value_round_trips_through_the_real_pushgateway(
    gateway: Pushgateway, job: str, serial: str, app: str, hostname: str
) -> None:
    push(gateway, job, serial, app, hostname)  # raises PushError on any 4xx/5xx
    group = gateway.group(job, serial)
    assert group is not None, f"group {job!r}/{serial!r} not found"
    assert group["labels"] == {"job": job, "device_serial": serial}
    apps = group["app_cpu_usage_percent"]["metrics"]
    assert [m["labels"]["app"] for m in apps] == [app]
    assert apps[0]["labels"]["device_serial"] == serial
    assert apps[0]["labels"]["hostname"] == hostname
    assert [m["labels"]["interface"] for m in group["network_receive_bytes_total"]["metrics"]] == [app]
    assert float(apps[0]["value"]) == 12.5
    assert float(group["app_memory_usage_mb"]["metrics"][0]["value"]) == 3.0
    delete = pm.PushgatewayClient(pm.Config(pushgateway_url=gateway.url, job=job, timeout=5), serial)
    delete.delete()
    delete.close()
    # DELETE is answered 202 and applied asynchronously by the gateway
    wait_until(lambda: gateway.group(job, serial) is None, 5, message="group deleted")
