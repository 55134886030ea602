"""The remote-write pieces of the agent on their own: the hand-written WriteRequest encoder and its
per-series batches checked by the real protobuf package, the send schedule and the flush on stop
against a loopback receiver, and the disk buffer on real files (torn and corrupt records, bounds, the
replay position across a restart)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List

import pytest

import push_monitor as pm
from conftest import FakeClock
from testkit.process import free_port
from testkit.remote_write import Receiver, Series, decode

AWKWARD = ["plain", "with space", 'quote"and\\backslash', "new\nline", "ünïcödé 设备", ""]


def families() -> List[pm.Family]:
    apps = [((("app", name),), float(i)) for i, name in enumerate(AWKWARD)]
    odd = [((("v", "nan"),), math.nan), ((("v", "inf"),), math.inf), ((("v", "big"),), 2**62)]
    return [pm.Family("app_cpu_usage_percent", "gauge", "d", apps), pm.Family("odd_values", "gauge", "d", odd)]


def test_protobuf_decodes_the_hand_encoded_request_exactly() -> None:
    encoder = pm.WriteRequestEncoder("job ü", (("device_serial", "rack/7"), ("hostname", "h")))
    payload, count = encoder.encode(families(), 1_796_000_000_123)
    series = decode(payload, compressed=False)
    assert count == len(series) == len(AWKWARD) + 3
    for one in series:
        names = [name for name, _ in one.labels]
        assert names == sorted(names)
        labels = dict(one.labels)
        assert labels["job"] == "job ü" and labels["device_serial"] == "rack/7" and labels["hostname"] == "h"
        assert [ts for ts, _ in one.samples] == [1_796_000_000_123]
    apps = {dict(s.labels)["app"]: s.samples[0][1] for s in series if s.name == "app_cpu_usage_percent"}
    assert apps == {name: float(i) for i, name in enumerate(AWKWARD)}
    odd = {dict(s.labels)["v"]: s.samples[0][1] for s in series if s.name == "odd_values"}
    assert math.isnan(odd["nan"]) and odd["inf"] == math.inf and odd["big"] == 2**62
    again, _ = encoder.encode(families(), 1_796_000_000_123)  # from the label cache
    assert again == payload


START_MS = 1_796_000_000_000


def cycle(index: int) -> List[pm.Family]:
    """A cycle whose values tell it apart; the third app exists only in even cycles (top-N churn)."""
    apps = [((("app", name),), float(index)) for name in ("a", "b", "c")[: 3 if index % 2 == 0 else 2]]
    return [pm.Family("app_cpu_usage_percent", "gauge", "d", apps), pm.Family("load_average_1m", "gauge", "d",
            [((), index + 0.5)])]  # fmt: skip


def by_labels(series: List[Series]) -> dict:
    return {tuple(one.labels): one.samples for one in series}


def test_a_batch_sends_each_series_once_with_every_cycles_samples_in_time_order() -> None:
    encoder = pm.WriteRequestEncoder("j", (("device_serial", "s"), ("hostname", "h")))
    batch = pm.SeriesBatch()
    start = START_MS
    for index in range(5):
        encoder.add(batch, cycle(index), start + 1000 * index)
    series = decode(batch.encode(), compressed=False)
    assert batch.samples == sum(len(one.samples) for one in series) == 5 * 3 + 3
    assert batch.first_ms == start
    assert len({one.labels for one in series}) == len(series) == 4  # a series' labels once per request
    samples = {dict(one.labels).get("app", "load"): one.samples for one in series}
    assert samples["load"] == tuple((start + 1000 * i, i + 0.5) for i in range(5))
    assert samples["a"] == tuple((start + 1000 * i, float(i)) for i in range(5))
    assert samples["c"] == tuple((start + 1000 * i, float(i)) for i in (0, 2, 4))
    single = [decode(encoder.encode(cycle(i), start + 1000 * i)[0], compressed=False) for i in range(5)]
    assert sorted(s for one in single for s in one) == sorted(  # the same samples as five requests
        Series(one.labels, (sample,)) for one in series for sample in one.samples
    )


def test_replay_merges_buffered_requests_into_the_same_request_as_one_batch() -> None:
    encoder = pm.WriteRequestEncoder("j", (("device_serial", "s"), ("hostname", "h")))
    direct, merged = pm.SeriesBatch(), pm.SeriesBatch()
    for first in (0, 2, 4):  # three buffered sends of two cycles each
        sent = pm.SeriesBatch()
        for index in (first, first + 1):
            encoder.add(sent, cycle(index), START_MS + 1000 * index)
            encoder.add(direct, cycle(index), START_MS + 1000 * index)
        merged.add_request(sent.encode(), sent.samples, sent.first_ms)
    assert merged.encode() == direct.encode()
    assert (merged.samples, merged.first_ms) == (direct.samples, START_MS)
    with pytest.raises(ValueError):
        pm.SeriesBatch().add_request(b"\x0a\x50" + direct.encode()[2:10], 1, 0)  # cut short
    with pytest.raises(ValueError):
        pm.SeriesBatch().add_request(b"\x12\x00", 1, 0)  # not a WriteRequest.timeseries field


def remote_write_agent(url: str, state_dir: Path, *argv: str) -> pm.Agent:
    config = pm.parse_config(
        ["--remote-write", url, "--interval", "1", "--top-n", "0", "--state-dir", str(state_dir), *argv], env={}
    )
    clock = FakeClock()
    return pm.Agent(config, "unit", hostname="h", clock=clock, sleep=clock.sleep)


def cycles_per_request(receiver: Receiver) -> List[int]:
    return [
        len(one.samples)
        for request in receiver.requests
        for one in decode(request.body)
        if one.name == "push_monitor_collection_timestamp_seconds"
    ]


@pytest.mark.parametrize(("send_interval", "expected"), [("5", [1, 5, 5]), ("1", [1] * 11), ("2.5", [1, 3, 3, 3])])
def test_the_first_cycle_is_sent_at_once_then_a_batch_per_send_interval(
    tmp_path: Path, send_interval: str, expected: List[int]
) -> None:
    with Receiver() as receiver:
        agent = remote_write_agent(receiver.url, tmp_path, "--remote-write-send-interval", send_interval)
        agent.run(max_cycles=11)
        agent.remote_write.close()
    # 2.5 s on a 1 s grid: the first slot at or after each deadline, so never more often than asked.
    assert cycles_per_request(receiver) == expected
    for request in receiver.requests:
        (stamps,) = [one.samples for one in decode(request.body) if one.name == "push_monitor_send_interval_seconds"]
        assert {value for _, value in stamps} == {float(send_interval)}


def test_a_stop_sends_the_cycles_not_yet_sent_or_keeps_them(tmp_path: Path) -> None:
    with Receiver() as receiver:
        agent = remote_write_agent(receiver.url, tmp_path / "up")
        agent.run(max_cycles=4)  # the first sent, three waiting
        agent.remote_write.flush()
        agent.remote_write.close()
    assert cycles_per_request(receiver) == [1, 3]
    down = remote_write_agent(f"http://127.0.0.1:{free_port()}/api/v1/write", tmp_path / "down")
    down.run(max_cycles=4)
    waiting = down.remote_write.batch.samples
    kept_before = down.remote_write.buffer.samples
    down.remote_write.flush()
    down.remote_write.close()
    assert waiting and down.remote_write.buffer.samples == kept_before + waiting
    assert pm.DiskBuffer(str(tmp_path / "down" / pm.BUFFER_DIR), 1 << 30, 3600).samples == kept_before + waiting


def record(timestamp_ms: int, size: int = 100) -> pm.Record:
    return pm.Record(timestamp_ms, 10, bytes([timestamp_ms % 251]) * size)


def now_ms() -> int:
    return int(pm.time.time() * 1000)


def drain(buffer: pm.DiskBuffer) -> List[int]:
    seen = []
    while True:
        records, offset = buffer.peek(1000)
        if not records:
            return seen
        seen += [r.timestamp_ms for r in records]
        buffer.commit(records, offset)


def test_a_torn_tail_is_skipped_and_the_rest_replays(tmp_path: Path) -> None:
    buffer = pm.DiskBuffer(str(tmp_path), 1 << 20, 3600)
    start = now_ms()
    for i in range(5):
        buffer.append(record(start + i))
    buffer.close()
    (segment,) = tmp_path.glob("*.seg")
    data = segment.read_bytes()
    segment.write_bytes(data + data[: pm.RECORD_HEADER.size + 30])  # a record cut short by a kill
    reopened = pm.DiskBuffer(str(tmp_path), 1 << 20, 3600)
    assert reopened.samples == 50
    reopened.append(record(start + 5))  # continues in a new segment, never behind the torn tail
    assert len(list(tmp_path.glob("*.seg"))) == 2
    assert drain(reopened) == [start + i for i in range(6)]
    assert not list(tmp_path.glob("*.seg")) and reopened.samples == 0 and reopened.disk_bytes == 0


def test_a_corrupt_record_ends_its_segment_and_is_counted(tmp_path: Path) -> None:
    buffer = pm.DiskBuffer(str(tmp_path), 1 << 20, 3600)
    start = now_ms()
    for i in range(4):
        buffer.append(record(start + i))
    buffer.close()
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[2 * (pm.RECORD_HEADER.size + 100) + pm.RECORD_HEADER.size + 5] ^= 0xFF  # third record's payload
    segment.write_bytes(bytes(data))
    reopened = pm.DiskBuffer(str(tmp_path), 1 << 20, 3600)
    assert drain(reopened) == [start, start + 1]
    assert reopened.dropped == 20


def test_the_oldest_go_first_when_full_and_are_counted(tmp_path: Path) -> None:
    buffer = pm.DiskBuffer(str(tmp_path), 65536, 3600)
    start = now_ms()
    for i in range(200):
        buffer.append(record(start + i, 1000))
    assert buffer.disk_bytes <= 65536
    kept = drain(buffer)
    assert kept == list(range(kept[0], start + 200)) and kept[0] > start
    assert buffer.dropped == 10 * (kept[0] - start)


def test_too_old_samples_are_dropped_and_counted(tmp_path: Path) -> None:
    buffer = pm.DiskBuffer(str(tmp_path), 1 << 20, 60)
    old, fresh = now_ms() - 120_000, now_ms()
    buffer.append(record(old))
    buffer.append(record(fresh))
    assert drain(buffer) == [fresh]
    assert buffer.dropped == 10


def test_the_replay_position_survives_a_restart(tmp_path: Path) -> None:
    buffer = pm.DiskBuffer(str(tmp_path), 1 << 20, 3600)
    start = now_ms()
    for i in range(6):
        buffer.append(record(start + i))
    records, offset = buffer.peek(250)  # three records of 100 bytes
    buffer.commit(records, offset)
    buffer.close()
    reopened = pm.DiskBuffer(str(tmp_path), 1 << 20, 3600)
    assert reopened.samples == 30
    assert drain(reopened) == [start + 3, start + 4, start + 5]


@pytest.mark.parametrize(
    ("kind", "kept"),
    [("connect", True), ("timeout", True), ("http-503", True), ("http-429", True), ("auth", True),
     ("http-400", False), ("http-404", False), ("http-413", False)],
)  # fmt: skip
def test_outages_and_refused_logins_keep_the_batch_other_4xx_drop_it(kind: str, kept: bool) -> None:
    """A refused login waits in the buffer for the operator's fix (docs/agent.md); any other 4xx
    refuses the batch itself, and retrying it cannot help."""
    assert pm.keeps_for_later(pm.PushError("answer", kind)) is kept
