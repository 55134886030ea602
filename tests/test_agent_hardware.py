"""The agent's filesystem, disk, temperature and battery collectors: which mounts and disks count,
exact label values for odd names, absent hardware as absent series, and --disable."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from typing import Any, List

import pytest

import push_monitor as pm
from conftest import AGENT, agent_env

Part = namedtuple("Part", "device mountpoint fstype opts")
Temp = namedtuple("Temp", "label current high critical")
Battery = namedtuple("Battery", "percent secsleft power_plugged")
IO = namedtuple("IO", "read_count write_count read_bytes write_bytes")


def mounts(*rows: tuple) -> List[Part]:
    return [Part(device, mountpoint, fstype, "rw") for device, mountpoint, fstype in rows]


def test_real_filesystems_keep_storage_and_root_and_drop_noise() -> None:
    table = mounts(
        ("overlay", "/", "overlay"),
        ("proc", "/proc", "proc"),
        ("tmpfs", "/run", "tmpfs"),
        ("/dev/loop3", "/snap/core/1", "squashfs"),
        ("/dev/sda1", "/boot/efi", "vfat"),
        ("/dev/sda2", "/srv/my data", "ext4"),
        ("/dev/sda2", "/var/lib/bound", "ext4"),  # bind mount of the same device
        ("rpool/home", "/tank", "zfs"),
        ("server:/export", "/mnt/nfs", "nfs4"),
    )
    chosen = [part.mountpoint for part in pm.real_filesystems(table, is_dir=lambda path: True)]
    assert chosen == ["/", "/tank", "/boot/efi", "/srv/my data"]


def test_a_path_mounted_over_counts_as_what_is_on_top() -> None:
    table = mounts(("/dev/sda1", "/", "ext4"), ("/dev/sda3", "/home", "ext4"), ("tmpfs", "/home", "tmpfs"))
    assert [part.mountpoint for part in pm.real_filesystems(table, is_dir=lambda path: True)] == ["/"]


def test_bind_mounted_files_and_the_bound_are_skipped() -> None:
    table = mounts(("overlay", "/", "overlay"), ("/dev/vda", "/etc/hosts", "ext4"))
    assert [p.mountpoint for p in pm.real_filesystems(table, is_dir=lambda path: path == "/")] == ["/"]
    many = mounts(*[(f"/dev/sd{i}", f"/m{i:03d}", "ext4") for i in range(100)])
    assert len(pm.real_filesystems(many, is_dir=lambda path: True)) == pm.MAX_FILESYSTEMS


class FakePsutil:
    """Stands in for psutil's hardware calls only: the mount table and sensors are inputs here."""

    def __init__(self, table: List[Part], sensors: Any = None, battery: Any = None) -> None:
        self.table = table
        self.sensors = sensors or {}
        self.battery = battery

    def disk_partitions(self, all: bool) -> List[Part]:  # noqa: A002 (psutil's name)
        return self.table

    def disk_usage(self, path: str) -> Any:
        if "unreadable" in path:
            raise PermissionError(13, "Permission denied", path)
        return __import__("psutil").disk_usage("/")

    def sensors_temperatures(self) -> Any:
        return self.sensors

    def sensors_battery(self) -> Any:
        return self.battery


def test_odd_mountpoints_are_exact_labels_and_unreadable_ones_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    odd = ["/", "/mnt/with space", "/mnt/ünïcödé", '/mnt/quote"and\\backslash', "/mnt/new\nline", "/mnt/unreadable"]
    table = mounts(*[(f"/dev/sd{i}", path, "ext4") for i, path in enumerate(odd)])
    monkeypatch.setattr(pm.os.path, "isdir", lambda path: True)
    fake = FakePsutil(table)
    usages = pm.filesystem_usage(fake, pm.real_filesystems(fake.disk_partitions(all=True)))
    assert [u.mountpoint for u in usages] == sorted(odd[:-1], key=lambda p: (len(p), p))
    exposition = pm.Exposition("serial", "host", 1.0)
    snap = pm.Snapshot(0.0, None, None, {}, (0, 0, 0), [], 0, 0.0, 0.0, filesystems=usages)
    families: List[pm.Family] = []
    exposition._hardware(families, snap)
    text = exposition.text(families).decode()
    assert 'mountpoint="/mnt/quote\\"and\\\\backslash"' in text
    assert 'mountpoint="/mnt/new\\nline"' in text
    assert 'mountpoint="/mnt/ünïcödé"' in text and 'mountpoint="/mnt/with space"' in text


def test_physical_disks_are_whole_disks_with_a_device(tmp_path: Path) -> None:
    for name in ("sda", "nvme0n1", "loop0", "zram0", "dm-0"):
        (tmp_path / name).mkdir()
    for name in ("sda", "nvme0n1"):
        (tmp_path / name / "device").mkdir()
    counters = {name: IO(1, 2, 3, 4) for name in ("sda", "sda1", "nvme0n1", "nvme0n1p1", "loop0", "zram0", "dm-0")}
    assert list(pm.physical_disks(counters, str(tmp_path))) == ["nvme0n1", "sda"]


def test_temperatures_name_each_sensor_once_and_skip_unreadable() -> None:
    sensors = {
        "cpu_thermal": [Temp("", 51.5, None, None)],
        "nvme": [Temp("Composite", 40.0, 80, 90), Temp("Composite", 42.0, 80, 90), Temp("Sensor 1", None, 0, 0)],
        "acpitz": [Temp("", float("nan"), None, None)],
    }
    assert pm.temperature_readings(sensors) == [
        ("cpu_thermal", 51.5),
        ("nvme/Composite", 40.0),
        ("nvme/Composite#2", 42.0),
    ]


def render_hardware(psutil: Any) -> str:
    snap = pm.Snapshot(
        0.0, None, None, {}, (0, 0, 0), [], 0, 0.0, 0.0,
        temperatures=pm.read_temperatures(psutil), battery=pm.read_battery(psutil),
    )  # fmt: skip
    families: List[pm.Family] = []
    exposition = pm.Exposition("serial", "host", 1.0)
    exposition._hardware(families, snap)
    return exposition.text(families).decode()


def test_absent_hardware_is_an_absent_series() -> None:
    text = render_hardware(FakePsutil([]))
    assert "temperature_celsius" not in text and "battery_" not in text and "disk_" not in text


def test_battery_and_power_source() -> None:
    text = render_hardware(FakePsutil([], battery=Battery(87, 3600, False)))
    assert 'battery_percent{device_serial="serial",hostname="host"} 87.0' in text
    assert 'battery_power_plugged{device_serial="serial",hostname="host"} 0' in text
    assert "battery_power_plugged" not in render_hardware(FakePsutil([], battery=Battery(50, 10, None)))


def print_exposition(*args: str, env: Any = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(AGENT), "--print", "--device-serial", "hw-test", *args],
        env=agent_env(env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_real_host_reports_its_root_filesystem_and_physical_disks() -> None:
    result = print_exposition()
    assert result.returncode == 0, result.stderr
    assert 'disk_usage_percent{device_serial="hw-test",' in result.stdout and 'mountpoint="/"' in result.stdout
    whole_disks = [n for n in os.listdir("/sys/block") if os.path.exists(f"/sys/block/{n}/device")]
    for disk in whole_disks[: pm.MAX_DISKS]:
        assert f'disk="{disk}"' in result.stdout
    assert "Traceback" not in result.stderr


def test_disabled_groups_are_left_out_from_flag_and_environment() -> None:
    by_flag = print_exposition("--disable", "disk,diskio,network")
    assert by_flag.returncode == 0, by_flag.stderr
    assert "disk_" not in by_flag.stdout and "network_" not in by_flag.stdout
    assert "total_cpu_usage_percent" in by_flag.stdout
    by_env = print_exposition(env={"PUSH_DISABLE": "disk"})
    assert "disk_usage_percent" not in by_env.stdout and "disk_read_bytes_total" in by_env.stdout


def test_an_unknown_group_is_one_line_exit_2() -> None:
    result = print_exposition(env={"PUSH_DISABLE": "disk,gpu"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "PUSH_DISABLE" in result.stderr and "gpu" in result.stderr


class CountingPsutil:
    """The real psutil, counting the lookups the sampler should not repeat every cycle."""

    def __init__(self, real: Any, battery: Any = None) -> None:
        self.real, self.battery, self.calls = real, battery, {"disk_partitions": 0, "sensors_battery": 0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def disk_partitions(self, all: bool = False) -> Any:  # noqa: A002 - psutil's name
        self.calls["disk_partitions"] += 1
        return self.real.disk_partitions(all=all)

    def sensors_battery(self) -> Any:
        self.calls["sensors_battery"] += 1
        return self.battery


def test_mounts_and_absent_hardware_are_looked_up_again_only_every_rediscovery_period() -> None:
    clock = [1000.0]
    sampler = pm.Sampler(top_n=0, clock=lambda: clock[0])
    counting = sampler.psutil = CountingPsutil(sampler.psutil)
    readings = []
    for step in (0, 1, 2, pm.REDISCOVER_SECONDS + 1, pm.REDISCOVER_SECONDS + 2):
        clock[0] = 1000.0 + step
        readings.append(sampler.sample())
    assert counting.calls == {"disk_partitions": 2, "sensors_battery": 2}
    assert all(snap.filesystems and snap.battery is None for snap in readings)
    # a battery that is there is read every cycle
    counting.battery, counting.calls["sensors_battery"] = Battery(80.0, 3600, True), 0
    for step in (pm.REDISCOVER_SECONDS * 2 + 3, pm.REDISCOVER_SECONDS * 2 + 4):
        clock[0] = 1000.0 + step
        assert sampler.sample().battery.percent == 80.0
    assert counting.calls["sensors_battery"] == 2
