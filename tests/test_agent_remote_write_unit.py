"""The remote-write pieces of the agent on their own: the hand-written WriteRequest encoder checked by
the real protobuf package, and the disk buffer on real files (torn and corrupt records, bounds, the
replay position across a restart)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List

import push_monitor as pm
from testkit.remote_write import decode

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
