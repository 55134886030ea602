"""Unit tests of the agent's pure parts: identity, top-N, CPU deltas, arguments, grouping paths."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import push_monitor as pm
from conftest import AGENT, NOT_ON_DEVICES, run_agent

# ---------------------------------------------------------------------------- identity


@pytest.mark.parametrize(
    "value",
    [
        "To Be Filled By O.E.M.", "to be filled by o.e.m.", "Default string", "System Serial Number", "0", "00000000",
        "0000-0000-0000", "", "   ", "\x00\x00", "Not Specified", "N/A", "None", "FFFFFFFF", "xxxxxxxx", "123456789",
    ],
)  # fmt: skip
def test_placeholder_serials_are_rejected(value: str) -> None:
    assert pm.is_placeholder_serial(value)


@pytest.mark.parametrize("value", ["C02XL0GSJGH5", "00000000a1b2c3d4", "PF2ABCDE", "VMware-56 4d 1a", "0x1234"])
def test_real_serials_are_accepted(value: str) -> None:
    assert not pm.is_placeholder_serial(value)


def test_dmi_skips_placeholder_product_serial_and_uses_board(tmp_path: Path) -> None:
    (tmp_path / "product_serial").write_text("To Be Filled By O.E.M.\n")
    (tmp_path / "board_serial").write_text("MB-4711\n")
    assert pm.serial_from_dmi(str(tmp_path)) == ("MB-4711", "dmi board_serial")


def test_dmi_prefers_product_serial(tmp_path: Path) -> None:
    (tmp_path / "product_serial").write_text("SYS-1\n")
    (tmp_path / "board_serial").write_text("MB-4711\n")
    assert pm.serial_from_dmi(str(tmp_path)) == ("SYS-1", "dmi product_serial")


def test_dmi_missing_gives_nothing(tmp_path: Path) -> None:
    assert pm.serial_from_dmi(str(tmp_path)) is None


def test_device_tree_serial_is_nul_terminated(tmp_path: Path) -> None:
    (tmp_path / "serial-number").write_bytes(b"10000000abcdef01\x00")
    found = pm.serial_from_device_tree([str(tmp_path)], cpuinfo=str(tmp_path / "none"))
    assert found == ("10000000abcdef01", "device-tree serial-number")


def test_raspberry_pi_cpuinfo_serial(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nHardware\t: BCM2835\nRevision\t: c03111\nSerial\t\t: 10000000deadbeef\nModel\t: Pi 4\n"
    )
    assert pm.serial_from_device_tree([str(tmp_path / "no-dt")], cpuinfo=str(cpuinfo)) == (
        "10000000deadbeef",
        "cpuinfo Serial",
    )


def test_raspberry_pi_zero_serial_is_rejected(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("Serial\t\t: 0000000000000000\n")
    assert pm.serial_from_device_tree([str(tmp_path / "no-dt")], cpuinfo=str(cpuinfo)) is None


def test_macos_ioreg_output_is_parsed() -> None:
    output = '+-o J314sAP  <class IOPlatformExpertDevice>\n    "IOPlatformSerialNumber" = "C02ZK1ABMD6M"\n'
    assert pm.serial_from_macos(lambda _cmd: output) == ("C02ZK1ABMD6M", "macOS IOPlatformSerialNumber")
    assert pm.serial_from_macos(lambda _cmd: '"IOPlatformSerialNumber" = "0"') is None


def test_windows_bios_serial_falls_back_to_wmic() -> None:
    def run(command):
        return "" if command[0] == "powershell" else "SerialNumber  \r\nPF1X2Y3Z  \r\n"

    assert pm.serial_from_windows(run) == ("PF1X2Y3Z", "Windows BIOS serial")
    assert pm.serial_from_windows(lambda _cmd: "System Serial Number\n") is None


def test_machine_id_is_hashed_never_raw(tmp_path: Path) -> None:
    machine_id = "0123456789abcdef0123456789abcdef"
    (tmp_path / "machine-id").write_text(machine_id + "\n")
    serial, source = pm.serial_from_machine_id([str(tmp_path / "machine-id")])
    assert serial.startswith("mid-") and len(serial) == 36
    assert machine_id not in serial and machine_id[:8] not in serial
    assert pm.serial_from_machine_id([str(tmp_path / "machine-id")])[0] == serial  # stable
    (tmp_path / "other").write_text("fedcba9876543210fedcba9876543210\n")
    assert pm.serial_from_machine_id([str(tmp_path / "other")])[0] != serial
    assert "machine-id" in source


def test_machine_id_that_is_not_an_id_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "machine-id").write_text("uninitialized\n")
    (tmp_path / "zeros").write_text("0" * 32)
    assert pm.serial_from_machine_id([str(tmp_path / "machine-id"), str(tmp_path / "zeros")]) is None


def test_state_file_uuid_is_created_once_and_kept(tmp_path: Path) -> None:
    first, source = pm.serial_from_state_file(str(tmp_path / "state"))
    assert source.startswith("new state file")
    second, source = pm.serial_from_state_file(str(tmp_path / "state"))
    assert second == first and source.startswith("state file")
    assert (tmp_path / "state" / "device-serial").read_text().strip() == first


def test_override_wins_over_everything(tmp_path: Path) -> None:
    assert pm.resolve_device_serial("my override", str(tmp_path)) == ("my override", "override")


def test_unknown_platform_without_machine_id_uses_state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pm, "serial_from_machine_id", lambda: None)
    serial, source = pm.resolve_device_serial(None, str(tmp_path), platform="sunos5")
    assert source.startswith("new state file") and len(serial) == 36


def test_print_serial_needs_only_the_standard_library(tmp_path: Path) -> None:
    # The role resolves the serial before installing psutil: not even an attempt to import it.
    result = run_agent("--print-serial", "--state-dir", str(tmp_path), refused=("psutil", *NOT_ON_DEVICES))
    assert result.returncode == 0, result.stderr
    reported = json.loads(result.stdout)
    assert reported["device_serial"] == pm.resolve_device_serial(None, str(tmp_path))[0]
    assert reported["source"]


def test_missing_dependencies_are_one_clear_error() -> None:
    code = (
        "import sys, runpy; sys.modules['psutil'] = None;"
        f"sys.argv = ['push_monitor.py', '--once']; runpy.run_path({str(AGENT)!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "missing Python package: psutil" in result.stderr


# ---------------------------------------------------------------------------- top-N and CPU deltas


def table(*rows: tuple) -> pm.ProcessTable:
    """(pid, name, cpu, rss[, start]) rows as a scanner's table."""
    return {(row[0], row[4] if len(row) > 4 else 1.0): (row[1].encode(), row[2], row[3]) for row in rows}


def test_first_scan_reports_zero_cpu_and_ranks_by_memory() -> None:
    apps = pm.top_apps(None, table((1, "a", 50, 10), (2, "b", 90, 30)), 1.0, 5)
    assert [(a.name, a.cpu_percent, a.memory_bytes) for a in apps] == [("b", 0.0, 30), ("a", 0.0, 10)]


def test_cpu_percent_is_the_delta_over_elapsed_time() -> None:
    before = table((1, "a", 10.0, 0), (2, "b", 3.0, 0))
    apps = pm.top_apps(before, table((1, "a", 10.5, 0), (2, "b", 5.0, 0)), 2.0, 5)
    assert {a.name: a.cpu_percent for a in apps} == {"b": 100.0, "a": 25.0}


def test_units_of_the_scanner_apply_to_cpu_and_memory() -> None:
    before = table((1, "a", 100, 3))
    apps = pm.top_apps(before, table((1, "a", 150, 3)), 1.0, 5, cpu_unit=0.01, memory_unit=4096)
    assert apps == [pm.AppUsage("a", 50.0, 3 * 4096)]


def test_processes_of_one_name_are_summed() -> None:
    before = table((1, "nginx", 1.0, 100), (2, "nginx", 1.0, 200), (3, "sshd", 0, 5))
    apps = pm.top_apps(before, table((1, "nginx", 1.2, 100), (2, "nginx", 1.3, 200), (3, "sshd", 0.1, 5)), 1.0, 5)
    assert apps[0] == pm.AppUsage("nginx", 50.0, 300)
    assert apps[1] == pm.AppUsage("sshd", 10.0, 5)


def test_new_process_counts_all_its_cpu_and_reused_pid_is_new() -> None:
    before = table((7, "old", 100.0, 0, 1.0))
    # pid 7 was reused by a new process (other start time) that used 0.4 s since it started
    apps = pm.top_apps(before, table((7, "new", 0.4, 0, 99.0), (8, "fresh", 0.2, 0)), 1.0, 5)
    assert {a.name: a.cpu_percent for a in apps} == {"new": 40.0, "fresh": 20.0}


def test_top_n_cuts_and_zero_reports_nothing() -> None:
    before = table(*[(i, f"p{i}", 0, 0) for i in range(20)])
    now = table(*[(i, f"p{i}", i / 100, 0) for i in range(20)])
    assert [a.name for a in pm.top_apps(before, now, 1.0, 3)] == ["p19", "p18", "p17"]
    assert pm.top_apps(before, now, 1.0, 0) == []


def fake_proc(root: Path, pid: int, comm: bytes, utime: int = 1, stime: int = 1, rss_pages: int = 1, cmdline=b""):
    directory = root / str(pid)
    directory.mkdir()
    rest = ["S", "1"] + ["0"] * 9 + [str(utime), str(stime)] + ["0"] * 6 + ["4242", "0", str(rss_pages)] + ["0"] * 20
    (directory / "stat").write_bytes(b"%d (%s) " % (pid, comm) + " ".join(rest).encode())
    if cmdline is not None:
        (directory / "cmdline").write_bytes(cmdline)


def test_linux_scanner_parses_awkward_names(tmp_path: Path) -> None:
    fake_proc(tmp_path, 10, b"evil) (name", 100, 50, 3)
    fake_proc(tmp_path, 11, b"a-very-long-pro", cmdline=b"/usr/bin/a-very-long-program-name\x00--flag\x00")
    (tmp_path / "self").mkdir()
    scanner = pm.LinuxProcessScanner(str(tmp_path))
    found = {key[0]: (key, value) for key, value in scanner.scan().items()}
    assert found["10"] == (("10", b"4242"), (b"evil) (name", 150, 3))
    assert found["11"][1][0] == b"a-very-long-program-name"
    assert scanner.cpu_unit == 1 / os.sysconf("SC_CLK_TCK") and scanner.memory_unit == os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize(
    ("comm", "cmdline", "name"),
    [
        # a name with spaces: argv[0] is one word of the command line, not cut at its spaces
        (b"my long app nam", b"/opt/my long app name here\x00--flag\x00", "my long app name here"),
        # cut inside a two-byte character: the full name, not a U+FFFD that merges two apps
        ("ééééééé".encode() + b"\xc3", "/usr/bin/éééééééé\x00".encode(), "éééééééé"),
        ("ééééééé".encode() + "€".encode()[:1], "/usr/bin/ééééééé€\x00".encode(), "ééééééé€"),
        # no command line (kernel thread, gone, or hidden): the cut character is dropped, not replaced
        ("ééééééé".encode() + b"\xc3", None, "ééééééé"),
        ("ééééé".encode() + "€".encode()[:2] + b"xx", b"", "ééééé\\xe2\\x82xx"),  # not a cut: kept, escaped
        # a rewritten title (setproctitle) with a slash in it
        (b"gunicorn: maste", b"gunicorn: master [app/web]\x00", "gunicorn: master [app/web]"),
        # argv[0] of another program (a script under its interpreter): the kernel's name stays
        (b"ansible-playboo", b"/usr/bin/python3\x00/usr/bin/ansible-playbook\x00", "ansible-playboo"),
    ],
)
def test_long_names_are_exact_and_never_cut_in_a_character(tmp_path: Path, comm, cmdline, name) -> None:
    fake_proc(tmp_path, 20, comm, cmdline=cmdline)
    scanner = pm.LinuxProcessScanner(str(tmp_path))
    apps = pm.top_apps(None, scanner.scan(), 1.0, 5)
    assert [app.name for app in apps] == [name]


def test_real_processes_with_long_names_keep_them(tmp_path: Path) -> None:
    names = ["my long app name here", "éééééééé", "ééééééé€-two"]
    children = []
    for name in names:
        link = tmp_path / name
        link.symlink_to("/bin/sleep")
        children.append(subprocess.Popen([str(link), "30"]))
    try:
        by_pid = {key[0]: value[0] for key, value in pm.LinuxProcessScanner().scan().items()}
        assert [by_pid[str(child.pid)].decode() for child in children] == names
    finally:
        for child in children:
            child.kill()
            child.wait()


def test_linux_scanner_measures_a_busy_process_against_real_proc() -> None:
    """The scanner's CPU share of a spinning process equals what psutil reads for it over the same
    scans: whatever share of a core a loaded machine gives the spinner."""
    import psutil

    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.time() + 20\nwhile time.time() < end: pass"]
    )
    try:
        spinner = psutil.Process(busy.pid)
        scanner = pm.LinuxProcessScanner()
        time.sleep(0.3)
        cpu_before, first, t0 = sum(spinner.cpu_times()[:2]), scanner.scan(), time.monotonic()
        time.sleep(1.0)
        second, t1, cpu_after = scanner.scan(), time.monotonic(), sum(spinner.cpu_times()[:2])
        mine = {key: value for key, value in second.items() if key[0] == str(busy.pid)}
        apps = pm.top_apps(first, mine, t1 - t0, 1, cpu_unit=scanner.cpu_unit, memory_unit=scanner.memory_unit)
        expected = 100 * (cpu_after - cpu_before) / (t1 - t0)
        assert apps[0].cpu_percent > 0
        # psutil reads just outside the two scans: two clock ticks of slack either way
        assert abs(apps[0].cpu_percent - expected) <= 100 * 2 * scanner.cpu_unit / (t1 - t0) + 1
    finally:
        busy.kill()
        busy.wait()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_linux_scanner_keeps_stat_files_open_and_closes_those_of_exited_processes() -> None:
    scanner = pm.LinuxProcessScanner()
    child = subprocess.Popen(["sleep", "30"])
    try:
        first = scanner.scan()
        others = _open_descriptors() - len(scanner._open)
        assert str(child.pid) in scanner._open and len(scanner._open) == len(first)
        # a second scan re-reads the same files: one descriptor per process, nothing else grows
        # (other processes may come and go on the host meanwhile)
        second = scanner.scan()
        assert len(scanner._open) == len(second) and _open_descriptors() - len(scanner._open) == others
        assert {key for key in second if key[0] == str(child.pid)}
    finally:
        child.kill()
        child.wait()
    third = scanner.scan()
    assert not [key for key in third if key[0] == str(child.pid)]
    assert str(child.pid) not in scanner._open
    scanner.close()
    assert not scanner._open


def test_a_kept_stat_file_of_an_exited_process_is_never_read_as_another(tmp_path: Path) -> None:
    """ESRCH from a kept descriptor (the process exited; its pid may be reused) means: reopen by path."""
    child = subprocess.Popen(["sleep", "30"])
    scanner = pm.LinuxProcessScanner()
    scanner.scan()
    assert str(child.pid) in scanner._open
    child.kill()
    child.wait()
    # pretend the pid came back as a new process: the kept descriptor is stale, the path is not
    os.symlink(f"/proc/{os.getpid()}", tmp_path / str(child.pid))
    scanner.proc = str(tmp_path)
    table = scanner.scan()
    own = Path(f"/proc/{os.getpid()}/stat").read_bytes()
    own_name, own_start = own[own.find(b"(") + 1 : own.rfind(b")")], own[own.rfind(b")") + 2 :].split()[19]
    [(key, (name, _, _))] = table.items()
    assert key == (str(child.pid), own_start) and name == own_name  # what the path holds now, read afresh
    scanner.close()


def test_linux_scanner_keeps_at_most_its_budget_of_descriptors_and_reads_the_rest_anyway() -> None:
    limited, unlimited = pm.LinuxProcessScanner(max_open=5), pm.LinuxProcessScanner(max_open=0)
    limited.scan()
    child = subprocess.Popen(["sleep", "30"])  # newest: read after the budget is used up
    try:
        table, reference = limited.scan(), unlimited.scan()
    finally:
        child.kill()
        child.wait()
    assert len(limited._open) == 5 and not unlimited._open
    assert len(table) > 15 and [value[0] for key, value in table.items() if key[0] == str(child.pid)] == [b"sleep"]
    mine = str(os.getpid())
    assert {key for key in table if key[0] == mine} == {key for key in reference if key[0] == mine}
    limited.close()


def test_descriptor_budget_stays_under_the_soft_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert pm.cached_descriptor_budget() == (256 - 64) // 2
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        assert pm.cached_descriptor_budget() == 0
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_idle_connection_check_works_above_descriptor_1023() -> None:
    """The scan may hold hundreds of descriptors, so the socket can be numbered past select()'s limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    high = os.dup2(client.fileno(), 2000)
    try:
        high_socket = socket.socket(fileno=high)
        assert high_socket.fileno() == 2000
        assert pm.HttpClient._stale(high_socket) is False
        peer.close()
        assert pm.HttpClient._stale(high_socket) is True
        high_socket.close()
    finally:
        for sock in (client, server):
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_psutil_scanner_agrees_with_linux_scanner_on_names_and_memory() -> None:
    linux_scanner = pm.LinuxProcessScanner()
    linux = {int(key[0]): value for key, value in linux_scanner.scan().items()}
    portable = {key[0]: value for key, value in pm.PsutilProcessScanner().scan().items()}
    me = os.getpid()
    assert linux[me][0] == portable[me][0]
    assert abs(linux[me][2] * linux_scanner.memory_unit - portable[me][2]) < 8 * 1024 * 1024


# ---------------------------------------------------------------------------- arguments


def test_defaults_match_the_original_tool() -> None:
    config = pm.parse_config([], env={})
    assert (config.pushgateway_url, config.interval, config.job, config.top_n) == (
        "http://localhost:9091",
        1.0,
        "device-metrics",
        10,
    )
    assert config.timeout < config.interval


def test_environment_overrides_defaults_and_flags_override_environment() -> None:
    env = {"PUSHGATEWAY_URL": "http://gw:9091", "PUSH_INTERVAL": "5", "DEVICE_JOB": "regular-servers", "TOP_N": "3"}
    config = pm.parse_config([], env=env)
    assert (config.pushgateway_url, config.interval, config.job, config.top_n) == (
        "http://gw:9091",
        5.0,
        "regular-servers",
        3,
    )
    config = pm.parse_config(
        ["--pushgateway", "https://other:443/pg/", "--interval", "0.5", "--job", "j", "--top-n", "0"], env=env
    )
    assert (config.pushgateway_url, config.interval, config.job, config.top_n) == ("https://other:443/pg", 0.5, "j", 0)


def test_the_send_interval_defaults_to_the_interval_or_five_seconds_if_longer() -> None:
    def send_interval(*argv: str) -> float:
        return pm.parse_config(["--remote-write", "http://rw", *argv], env={}).send_interval

    assert send_interval() == 5.0
    assert send_interval("--interval", "30") == 30.0
    assert send_interval("--remote-write-send-interval", "1") == 1.0
    from_env = pm.parse_config(["--remote-write", "http://rw"], env={"REMOTE_WRITE_SEND_INTERVAL": "60"})
    assert from_env.send_interval == 60


def test_default_timeout_follows_the_interval() -> None:
    assert pm.parse_config(["--interval", "30"], env={}).timeout == 10.0
    assert pm.parse_config(["--interval", "0.5"], env={}).timeout == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("argv", "env", "blamed"),
    [
        (["--interval", "0"], {}, "--interval"),
        (["--interval", "-1"], {}, "--interval"),
        (["--interval", "nan"], {}, "--interval"),
        (["--interval", "inf"], {}, "--interval"),
        (["--interval", "fast"], {}, "--interval"),
        ([], {"PUSH_INTERVAL": "0"}, "PUSH_INTERVAL"),
        (["--top-n", "-1"], {}, "--top-n"),
        (["--top-n", "2.5"], {}, "--top-n"),
        ([], {"TOP_N": "many"}, "TOP_N"),
        (["--pushgateway", "localhost:9091"], {}, "--pushgateway"),
        (["--pushgateway", "ftp://gw"], {}, "--pushgateway"),
        (["--pushgateway", "http://"], {}, "--pushgateway"),
        (["--pushgateway", "http://gw:99999"], {}, "--pushgateway"),
        (["--pushgateway", "http://user:pw@gw:9091"], {}, "--pushgateway"),
        ([], {"PUSHGATEWAY_URL": "gw"}, "PUSHGATEWAY_URL"),
        (["--interval", "1", "--timeout", "1"], {}, "--timeout"),
        (["--job", " "], {}, "--job"),
        (["--device-serial", ""], {}, "--device-serial"),
        (["--password-file", "/nonexistent/pw", "--username", "u"], {}, "--password-file"),
        (["--username", "u"], {}, "--username"),
        ([], {"PUSHGATEWAY_PASSWORD": "pw"}, "PUSHGATEWAY_USERNAME"),
        (["--ca-file", "/etc/hostname"], {}, "https://"),
        (["--log-level", "loud"], {}, "--log-level"),
        (["--remote-write", "http://rw", "--remote-write-send-interval", "0"], {}, "--remote-write-send-interval"),
        ([], {"REMOTE_WRITE_URL": "http://rw", "REMOTE_WRITE_SEND_INTERVAL": "soon"}, "REMOTE_WRITE_SEND_INTERVAL"),
        (["--remote-write", "http://rw", "--interval", "10", "--remote-write-send-interval", "5"], {}, "shorter"),
    ],
)
def test_bad_input_is_one_clear_error_naming_its_source(argv, env, blamed) -> None:
    with pytest.raises(pm.ConfigError) as raised:
        pm.parse_config(argv, env=env)
    assert blamed in str(raised.value)
    assert "\n" not in str(raised.value)


def test_password_comes_from_file_without_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    config = pm.parse_config(["--username", "device", "--password-file", str(tmp_path / "pw")], env={})
    assert (config.username, config.password) == ("device", "s3cret")
    assert "s3cret" not in repr(config)


def test_there_is_no_password_flag() -> None:
    with pytest.raises(SystemExit) as raised:
        pm.parse_config(["--password", "x"], env={})
    assert raised.value.code == 2


def test_help_documents_every_environment_variable() -> None:
    text = pm.build_parser().format_help()
    for name in (
        "PUSHGATEWAY_URL",
        "PUSH_INTERVAL",
        "DEVICE_JOB",
        "TOP_N",
        "DEVICE_SERIAL",
        "PUSH_TIMEOUT",
        "PUSHGATEWAY_PASSWORD",
    ):
        assert name in text


# ---------------------------------------------------------------------------- pushing


@pytest.mark.parametrize("serial", ["abc-123", "with space", "a/b", "ü-ñ", "", "x" * 300, 'quote"back\\slash\nnl'])
def test_grouping_path_round_trips(serial: str) -> None:
    path = pm.grouping_path("my job", serial)
    parts = path.split("/")[2:]
    decoded = {}
    for label, value in zip(parts[::2], parts[1::2]):
        if label.endswith("@base64"):
            decoded[label[: -len("@base64")]] = base64.urlsafe_b64decode(value).decode()
        else:
            decoded[label] = value
    assert decoded == {"job": "my job", "device_serial": serial}


def test_plain_values_stay_readable_in_the_path() -> None:
    assert pm.grouping_path("critical-servers", "SN.123:4") == "/metrics/job/critical-servers/device_serial/SN.123:4"


@pytest.mark.parametrize(
    ("value", "encoded"), [(".", "job@base64/Lg=="), ("..", "job@base64/Li4="), ("", "job@base64/=")]
)
def test_path_steps_and_the_empty_value_are_always_encoded(value: str, encoded: str) -> None:
    assert pm.grouping_path(value, "s").startswith(f"/metrics/{encoded}/")


# ---------------------------------------------------------------------------- bounds and odd input

NOT_UTF8 = b"caf\xe9".decode("utf-8", "surrogateescape")  # how Python hands over such argv / environ bytes


@pytest.mark.parametrize(
    ("argv", "env", "blamed"),
    [
        (["--interval", "1e-7"], {}, "--interval"),
        (["--interval", "1e10"], {}, "--interval"),
        ([], {"PUSH_INTERVAL": "0.01"}, "PUSH_INTERVAL"),
        (["--top-n", "101"], {}, "--top-n"),
        ([], {"TOP_N": "100000"}, "TOP_N"),
        (["--timeout", "0"], {}, "--timeout"),
        (["--pushgateway", "http://gw:0"], {}, "--pushgateway"),
        (["--pushgateway", "http://gw x:9091"], {}, "--pushgateway"),
        (["--job", NOT_UTF8], {}, "--job"),
        (["--device-serial", NOT_UTF8], {}, "--device-serial"),
        ([], {"DEVICE_SERIAL": NOT_UTF8}, "DEVICE_SERIAL"),
        ([], {"DEVICE_JOB": NOT_UTF8}, "DEVICE_JOB"),
        (["--username", NOT_UTF8], {"PUSHGATEWAY_PASSWORD": "pw"}, "--username"),
        (["--username", "u"], {"PUSHGATEWAY_PASSWORD": NOT_UTF8}, "PUSHGATEWAY_PASSWORD"),
        (["--pushgateway", "http://gw/" + NOT_UTF8], {}, "--pushgateway"),
    ],
)
def test_out_of_range_and_undecodable_input_is_one_clear_error(argv, env, blamed) -> None:
    with pytest.raises(pm.ConfigError) as raised:
        pm.parse_config(argv, env=env)
    assert blamed in str(raised.value)
    assert "\n" not in str(raised.value)


def test_undecodable_serial_from_the_environment_exits_2_in_one_line() -> None:
    env = {**os.environ, "DEVICE_SERIAL": NOT_UTF8}
    env.pop("PUSHGATEWAY_URL", None)
    result = subprocess.run(
        [sys.executable, str(AGENT), "--once", "--pushgateway", "http://127.0.0.1:1"],
        env={k: v.encode("utf-8", "surrogateescape") for k, v in env.items()},
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.decode().count("\n") == 1 and b"DEVICE_SERIAL: not valid UTF-8" in result.stderr


def test_accepted_url_forms_are_normalised() -> None:
    def url(raw: str) -> str:
        return pm.parse_config(["--pushgateway", raw], env={}).pushgateway_url

    assert url("HTTPS://GW.example:8443/") == "https://GW.example:8443"
    assert url("http://gw/push path/ü") == "http://gw/push%20path/%C3%BC"
    assert url("http://[::1]:9091") == "http://[::1]:9091"
    ca = pm.parse_config(["--pushgateway", "HTTPS://gw", "--ca-file", str(AGENT)], env={})
    assert ca.ca_file == str(AGENT)
    assert pm.PushgatewayClient(pm.Config(pushgateway_url="http://gw/a%20b"), "s").path == (
        "/a%20b/metrics/job/device-metrics/device_serial/s"
    )


def test_interval_and_top_n_at_their_documented_bounds_are_accepted() -> None:
    assert pm.parse_config(["--interval", "0.1", "--top-n", "100"], env={}).top_n == 100
    assert pm.parse_config(["--interval", "86400"], env={}).timeout == 10.0


def test_state_dir_flag_keeps_colons_and_systemd_list_takes_the_first(tmp_path: Path) -> None:
    assert pm.parse_config(["--state-dir", "/srv/a:b"], env={}).state_dir == "/srv/a:b"
    assert pm.parse_config([], env={"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}).state_dir == "/var/lib/a"


@pytest.mark.parametrize("content", [b"", b"\n", b"To Be Filled By O.E.M.\n", b"\xff\xfe\n", b"id-one\nid-two\n"])
def test_an_existing_state_file_without_a_usable_id_is_never_replaced(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "device-serial").write_bytes(content)
    with pytest.raises(pm.ConfigError, match="remove it"):
        pm.serial_from_state_file(str(tmp_path))
    assert (tmp_path / "device-serial").read_bytes() == content


def test_an_unreadable_state_file_is_an_error_and_kept() -> None:
    """As an unprivileged user (root reads anything): an id file the agent cannot read is not replaced."""
    code = (
        "import sys, push_monitor as pm\n"
        "try:\n    pm.serial_from_state_file(sys.argv[1])\nexcept pm.ConfigError as e:\n    print(e)"
    )
    with tempfile.TemporaryDirectory() as top:
        state = Path(top) / "state"
        state.mkdir()
        (state / "device-serial").write_text("the-real-id\n")
        (state / "device-serial").chmod(0o600)
        agent_dir = Path(top) / "agent"
        agent_dir.mkdir()
        (agent_dir / "push_monitor.py").write_bytes(AGENT.read_bytes())
        command = ["/usr/bin/python3", "-c", code, str(state)]
        if os.geteuid() == 0:
            for path in (Path(top), agent_dir, agent_dir / "push_monitor.py"):
                path.chmod(0o755)
            os.chown(state, 65534, 65534)  # the agent's own directory, an id file that is not its own
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        else:
            (state / "device-serial").chmod(0)
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, env={"PYTHONPATH": str(agent_dir)})
        assert "cannot read the device id" in result.stdout, result.stdout + result.stderr
        assert (state / "device-serial").read_text() == "the-real-id\n"
        assert sorted(p.name for p in state.iterdir()) == ["device-serial"]


def test_signal_handlers_are_in_place_before_psutil_is_imported() -> None:
    """A signal during start-up must be a clean stop: the handlers go in before the slow imports."""
    code = f"""
import signal, sys, runpy
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "psutil":
            print("handler at psutil import:", signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, flush=True)
        return None
sys.meta_path.insert(0, Watch())
sys.argv = ["push_monitor.py", "--print", "--top-n", "0", "--device-serial", "x"]
runpy.run_path({str(AGENT)!r}, run_name="__main__")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "handler at psutil import: True" in result.stdout, result.stdout[:300] + result.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_agent_loads_its_modules_is_a_clean_stop(signum: int) -> None:
    code = f"""
import os, sys, runpy
class SignalOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == "uuid":  # one of the agent's own imports, long before main()
            os.kill(os.getpid(), {int(signum)})
        return None
sys.meta_path.insert(0, SignalOnImport())
sys.argv = ["push_monitor.py", "--print", "--device-serial", "x"]
runpy.run_path({str(AGENT)!r}, run_name="__main__")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert f"{signal.Signals(signum).name} received, stopping" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
