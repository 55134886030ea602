#!/usr/bin/env python3
"""push_monitor: collect host metrics with psutil and push them to a Prometheus Pushgateway.

One group per device (grouping key: job + device_serial), pushed with PUT on a fixed schedule.
Runs standalone (`python3 push_monitor.py --help`) or as the systemd service the Ansible role installs.
Depends only on psutil and prometheus_client (current releases or Debian 12 / Ubuntu 22.04 packages).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import logging
import math
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

# The deployment resolves the serial with `--print-serial` before the dependencies are installed,
# so a missing library is reported only when a command actually needs it.
try:
    import psutil
except ImportError:  # pragma: no cover - exercised on hosts without psutil
    psutil = None  # type: ignore[assignment]
try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError:  # pragma: no cover
    CollectorRegistry = None  # type: ignore[assignment,misc]

__version__ = "1.0.0"
PROG = "push_monitor"
log = logging.getLogger(PROG)

DEFAULT_PUSHGATEWAY = "http://localhost:9091"
DEFAULT_INTERVAL = 1.0
DEFAULT_JOB = "device-metrics"
DEFAULT_TOP_N = 10
MAX_DEFAULT_TIMEOUT = 10.0
SYSTEM_STATE_DIR = "/var/lib/push-monitor"
SERIAL_STATE_FILE = "device-serial"
EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Keyed hash input for the machine-id fallback (as systemd's sd_id128_get_machine_app_specific):
# the raw machine-id is a secret-ish host identifier that must not leave the device.
MACHINE_ID_APP_KEY = b"push_monitor device serial v1"
PLAIN_GROUPING_VALUE = re.compile(r"[A-Za-z0-9_.:-]+")


class ConfigError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


class PushError(Exception):
    """A push or delete that did not reach the gateway or was refused by it."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ShutdownRequested(Exception):
    """Raised from the SIGTERM/SIGINT handler so that a blocked wait or request ends at once."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    pushgateway_url: str = DEFAULT_PUSHGATEWAY
    interval: float = DEFAULT_INTERVAL
    job: str = DEFAULT_JOB
    top_n: int = DEFAULT_TOP_N
    timeout: float = 0.8
    device_serial: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    ca_file: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    state_dir: Optional[str] = None
    log_level: str = "INFO"
    once: bool = False
    print_only: bool = False
    print_serial: bool = False
    delete_on_exit: bool = False


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; bad input here gets exactly one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{PROG}: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="push_monitor.py",
        allow_abbrev=False,  # "--password x" must not silently become --password-file
        description="Collect CPU, memory, network and top-N process metrics and push them to a "
        "Prometheus Pushgateway, one group per device (job + device_serial).",
        epilog="Precedence: flag > environment variable > default. The password is never a flag: "
        "use --password-file or PUSHGATEWAY_PASSWORD. Exit status: 0 ok, 1 push failed (--once), "
        "2 bad input.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--pushgateway",
        metavar="URL",
        help=f"Pushgateway URL, http:// or https:// [env PUSHGATEWAY_URL, default {DEFAULT_PUSHGATEWAY}]",
    )
    add(
        "--interval",
        metavar="SECONDS",
        help=f"push interval, fractions allowed [env PUSH_INTERVAL, default {DEFAULT_INTERVAL:g}]",
    )
    add("--job", metavar="NAME", help=f"job label of the device's group [env DEVICE_JOB, default {DEFAULT_JOB}]")
    add("--top-n", metavar="N", help=f"number of top apps by CPU to report [env TOP_N, default {DEFAULT_TOP_N}]")
    add("--device-serial", metavar="SERIAL", help="override the detected hardware serial [env DEVICE_SERIAL]")
    add(
        "--timeout",
        metavar="SECONDS",
        help="push timeout, shorter than the interval [env PUSH_TIMEOUT, default min(0.8 x interval, 10)]",
    )
    add("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR [env LOG_LEVEL, default INFO]")
    add("--username", metavar="USER", help="basic auth user [env PUSHGATEWAY_USERNAME]")
    add(
        "--password-file",
        metavar="FILE",
        help="file holding the basic auth password [env PUSHGATEWAY_PASSWORD_FILE; or PUSHGATEWAY_PASSWORD]",
    )
    add("--ca-file", metavar="FILE", help="CA bundle to verify an https:// gateway [env PUSHGATEWAY_CA_FILE]")
    add("--client-cert", metavar="FILE", help="client certificate for mutual TLS [env PUSHGATEWAY_CLIENT_CERT]")
    add("--client-key", metavar="FILE", help="client certificate key [env PUSHGATEWAY_CLIENT_KEY]")
    add(
        "--state-dir",
        metavar="DIR",
        help=f"where a generated device id is kept [env STATE_DIRECTORY, "
        f"default {SYSTEM_STATE_DIR} or ~/.local/state/push-monitor]",
    )
    add("--once", action="store_true", help="collect and push once; exit 0 on success, 1 on failure")
    add(
        "--print", dest="print_only", action="store_true", help="write the exposition text to stdout instead of pushing"
    )
    add(
        "--print-serial",
        action="store_true",
        help='print {"device_serial": ..., "source": ...} as JSON and exit (needs only the standard library)',
    )
    add("--delete-on-exit", action="store_true", help="delete the device's group from the gateway on SIGTERM/SIGINT")
    add("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def _pick(args: argparse.Namespace, flag: str, env: Dict[str, str], env_name: str) -> Tuple[Optional[str], str]:
    """Returns the winning raw value and the name to blame if it is bad."""
    flag_value = getattr(args, flag.lstrip("-").replace("-", "_"))
    if flag_value is not None:
        return flag_value, flag
    value = env.get(env_name)
    if value is not None and value != "":
        return value, env_name
    return None, env_name


def parse_seconds(raw: str, source: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{source}={raw!r}: not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{source}={raw!r}: must be a finite number of seconds > 0")
    return value


def parse_top_n(raw: str, source: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{source}={raw!r}: not a whole number") from None
    if value < 0:
        raise ConfigError(f"{source}={raw!r}: must be 0 or more")
    return value


def validate_url(raw: str, source: str) -> str:
    url = raw.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{source}={raw!r}: must start with http:// or https://")
    try:
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        raise ConfigError(f"{source}={raw!r}: invalid port") from None
    if not parts.hostname or (port is None and parts.netloc.endswith(":")):
        raise ConfigError(f"{source}={raw!r}: no host name")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            f"{source}={raw!r}: give only scheme, host, port and path (credentials go in --username / --password-file)"
        )
    return url


def _readable_file(path: str, source: str) -> str:
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise ConfigError(f"{source}={path!r}: cannot read: {err.strerror}") from None
    return path


def read_password(path: str, source: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            password = handle.read().rstrip("\r\n")
    except OSError as err:
        raise ConfigError(f"{source}={path!r}: cannot read password file: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}={path!r}: password file is not UTF-8 text") from None
    if not password:
        raise ConfigError(f"{source}={path!r}: password file is empty")
    return password


def _credentials(args: argparse.Namespace, env: Dict[str, str]) -> Tuple[Optional[str], Optional[str]]:
    username, _ = _pick(args, "--username", env, "PUSHGATEWAY_USERNAME")
    password_file, source = _pick(args, "--password-file", env, "PUSHGATEWAY_PASSWORD_FILE")
    password = read_password(password_file, source) if password_file else env.get("PUSHGATEWAY_PASSWORD") or None
    if password and not username:
        raise ConfigError("a password is set but no --username (or PUSHGATEWAY_USERNAME)")
    if username and not password:
        raise ConfigError("--username is set but no password: use --password-file or PUSHGATEWAY_PASSWORD")
    return username, password


def _tls_files(args: argparse.Namespace, env: Dict[str, str], url: str) -> Dict[str, Optional[str]]:
    files: Dict[str, Optional[str]] = {}
    for attr, env_name in (
        ("ca_file", "PUSHGATEWAY_CA_FILE"),
        ("client_cert", "PUSHGATEWAY_CLIENT_CERT"),
        ("client_key", "PUSHGATEWAY_CLIENT_KEY"),
    ):
        raw, source = _pick(args, "--" + attr.replace("_", "-"), env, env_name)
        files[attr] = _readable_file(raw, source) if raw else None
    if any(files.values()) and not url.startswith("https://"):
        raise ConfigError("--ca-file / --client-cert / --client-key need an https:// Pushgateway URL")
    if bool(files["client_cert"]) != bool(files["client_key"]):
        raise ConfigError("--client-cert and --client-key go together")
    return files


def parse_config(argv: Optional[Sequence[str]] = None, env: Optional[Dict[str, str]] = None) -> Config:
    """Flags over environment over defaults; raises ConfigError before any network traffic."""
    env = dict(os.environ if env is None else env)
    args = build_parser().parse_args(argv)

    raw, source = _pick(args, "--pushgateway", env, "PUSHGATEWAY_URL")
    url = validate_url(raw, source) if raw is not None else DEFAULT_PUSHGATEWAY
    raw, source = _pick(args, "--interval", env, "PUSH_INTERVAL")
    interval = parse_seconds(raw, source) if raw is not None else DEFAULT_INTERVAL
    raw, source = _pick(args, "--job", env, "DEVICE_JOB")
    job = raw if raw is not None else DEFAULT_JOB
    if not job.strip():
        raise ConfigError(f"{source}: job name must not be empty")
    raw, source = _pick(args, "--top-n", env, "TOP_N")
    top_n = parse_top_n(raw, source) if raw is not None else DEFAULT_TOP_N
    raw, source = _pick(args, "--timeout", env, "PUSH_TIMEOUT")
    timeout = parse_seconds(raw, source) if raw is not None else min(0.8 * interval, MAX_DEFAULT_TIMEOUT)
    if timeout >= interval:
        raise ConfigError(f"{source}={raw!r}: push timeout must be shorter than the interval ({interval:g} s)")
    serial, source = _pick(args, "--device-serial", env, "DEVICE_SERIAL")
    if serial is not None and not serial.strip():
        raise ConfigError(f"{source}: device serial must not be blank")
    level, source = _pick(args, "--log-level", env, "LOG_LEVEL")
    level = (level or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{source}={level!r}: must be DEBUG, INFO, WARNING or ERROR")
    username, password = _credentials(args, env)
    tls = _tls_files(args, env, url)
    state_dir, _ = _pick(args, "--state-dir", env, "STATE_DIRECTORY")
    if state_dir:
        state_dir = state_dir.split(":")[0]  # systemd passes a list when several dirs are set
    return Config(
        pushgateway_url=url, interval=interval, job=job, top_n=top_n, timeout=timeout,
        device_serial=serial, username=username, password=password, state_dir=state_dir,
        log_level=level, once=args.once, print_only=args.print_only, print_serial=args.print_serial,
        delete_on_exit=args.delete_on_exit, **tls,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Device identity
# --------------------------------------------------------------------------------------------

PLACEHOLDER_SERIALS = frozenset(
    s.lower()
    for s in (
        "To Be Filled By O.E.M.", "To be filled by O.E.M.", "Default string", "System Serial Number",
        "Chassis Serial Number", "Base Board Serial Number", "Not Specified", "Not Applicable",
        "Not Available", "None", "N/A", "NA", "Unknown", "Invalid", "Empty", "Serial", "SerialNumber",
        "0123456789", "123456789", "1234567890", "OEM", "O.E.M.", "Default", "To Be Filled",
    )
)  # fmt: skip


def is_placeholder_serial(value: str) -> bool:
    """Vendors ship boards with filler text instead of a serial; such a value would merge devices."""
    cleaned = value.strip().strip("\x00").strip()
    if not cleaned or cleaned.lower() in PLACEHOLDER_SERIALS:
        return True
    significant = re.sub(r"[\s:.\-_]", "", cleaned).lower()
    # All zeros, all Fs, all Xs: blank EEPROMs and masked values.
    return not significant or len(set(significant)) == 1 and significant[0] in "0fx"


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace").strip().strip("\x00").strip()
    except OSError:
        return None


def serial_from_dmi(root: str = "/sys/class/dmi/id") -> Optional[Tuple[str, str]]:
    for name in ("product_serial", "board_serial"):
        value = _read_text(os.path.join(root, name))
        if value and not is_placeholder_serial(value):
            return value, f"dmi {name}"
    return None


def serial_from_device_tree(
    roots: Sequence[str] = ("/proc/device-tree", "/sys/firmware/devicetree/base"), cpuinfo: str = "/proc/cpuinfo"
) -> Optional[Tuple[str, str]]:
    for root in roots:
        value = _read_text(os.path.join(root, "serial-number"))
        if value and not is_placeholder_serial(value):
            return value, "device-tree serial-number"
    # Raspberry Pi kernels without a device-tree node still print the SoC serial here.
    text = _read_text(cpuinfo) or ""
    match = re.search(r"^Serial\s*:\s*(\S+)\s*$", text, re.MULTILINE)
    if match and not is_placeholder_serial(match.group(1)):
        return match.group(1), "cpuinfo Serial"
    return None


def _run_quietly(command: Sequence[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout if result.returncode == 0 else ""


def serial_from_macos(run: Callable[[Sequence[str]], str] = _run_quietly) -> Optional[Tuple[str, str]]:
    output = run(["ioreg", "-rd1", "-c", "IOPlatformExpertDevice"])
    match = re.search(r'"IOPlatformSerialNumber"\s*=\s*"([^"]*)"', output)
    if match and not is_placeholder_serial(match.group(1)):
        return match.group(1), "macOS IOPlatformSerialNumber"
    return None


def serial_from_windows(run: Callable[[Sequence[str]], str] = _run_quietly) -> Optional[Tuple[str, str]]:
    commands = (
        ["powershell", "-NoProfile", "-Command", "(Get-CimInstance -ClassName Win32_BIOS).SerialNumber"],
        ["wmic", "bios", "get", "serialnumber"],  # older Windows without CIM cmdlets
    )
    for command in commands:
        lines = [line.strip() for line in run(command).splitlines() if line.strip()]
        lines = [line for line in lines if line.lower() != "serialnumber"]
        if lines and not is_placeholder_serial(lines[0]):
            return lines[0], "Windows BIOS serial"
    return None


def serial_from_machine_id(
    paths: Sequence[str] = ("/etc/machine-id", "/var/lib/dbus/machine-id"),
) -> Optional[Tuple[str, str]]:
    for path in paths:
        machine_id = (_read_text(path) or "").lower()
        if re.fullmatch(r"[0-9a-f]{32}", machine_id) and not is_placeholder_serial(machine_id):
            digest = hmac.new(bytes.fromhex(machine_id), MACHINE_ID_APP_KEY, hashlib.sha256).hexdigest()
            return "mid-" + digest[:32], f"hash of {path}"
    return None


def default_state_dir() -> str:
    if os.access(SYSTEM_STATE_DIR, os.W_OK) or (os.geteuid() == 0 if hasattr(os, "geteuid") else False):
        return SYSTEM_STATE_DIR
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "push-monitor")


def serial_from_state_file(state_dir: str) -> Tuple[str, str]:
    """Last resort: a random id, generated once and kept, so the device stays one series."""
    path = os.path.join(state_dir, SERIAL_STATE_FILE)
    existing = _read_text(path)
    if existing and not is_placeholder_serial(existing):
        return existing, f"state file {path}"
    os.makedirs(state_dir, mode=0o750, exist_ok=True)
    generated = str(uuid.uuid4())
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(generated + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)  # atomic: a crash never leaves a half-written id
    return generated, f"new state file {path}"


def resolve_device_serial(
    override: Optional[str], state_dir: Optional[str], platform: str = sys.platform
) -> Tuple[str, str]:
    """Returns (serial, source), trying the most durable identity first."""
    if override is not None:
        return override, "override"
    if platform.startswith("linux"):
        sources: List[Callable[[], Optional[Tuple[str, str]]]] = [
            serial_from_dmi,
            serial_from_device_tree,
            serial_from_machine_id,
        ]
    elif platform == "darwin":
        sources = [serial_from_macos]
    elif platform.startswith("win"):
        sources = [serial_from_windows]
    else:
        sources = [serial_from_machine_id]
    for source in sources:
        found = source()
        if found:
            return found
    return serial_from_state_file(state_dir or default_state_dir())


# --------------------------------------------------------------------------------------------
# Collection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessSample:
    key: Tuple[int, float]  # (pid, start time): a reused pid is a different process
    name: str
    cpu_seconds: float
    rss_bytes: int


@dataclass(frozen=True)
class AppUsage:
    name: str
    cpu_percent: float
    memory_bytes: int


@dataclass(frozen=True)
class Snapshot:
    cpu_percent: float
    memory: object  # psutil.virtual_memory() result
    swap: object
    network: Dict[str, object]
    load_average: Tuple[float, float, float]
    apps: List[AppUsage]
    process_count: int
    boot_time: float
    collection_seconds: float


def label_safe(text: str) -> str:
    """Label values must be valid UTF-8; /proc and interface names may carry undecodable bytes."""
    return text.encode("utf-8", "replace").decode("utf-8")


class LinuxProcessScanner:
    """Reads /proc/<pid>/stat once per process: name, CPU ticks and RSS come from one small read,
    which is several times cheaper than psutil.Process objects on hosts with hundreds of processes."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.ticks_per_second = float(os.sysconf("SC_CLK_TCK"))
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self._full_names: Dict[Tuple[int, str, str], str] = {}

    def scan(self) -> List[ProcessSample]:
        samples = []
        full_names: Dict[Tuple[int, str, str], str] = {}
        for entry in os.listdir(self.proc):
            if not entry.isdigit():
                continue
            sample = self._read(int(entry), full_names)
            if sample is not None:
                samples.append(sample)
        self._full_names = full_names  # drops names of processes that are gone
        return samples

    def _read(self, pid: int, full_names: Dict[Tuple[int, str, str], str]) -> Optional[ProcessSample]:
        # os.open/os.read, not open(): this runs for every process every cycle, and skipping the
        # io layer's buffered file objects makes the whole scan about a quarter cheaper.
        try:
            descriptor = os.open(f"{self.proc}/{pid}/stat", os.O_RDONLY)
        except OSError:
            return None  # exited between listdir and open
        try:
            raw = os.read(descriptor, 4096)  # one read: the line is well under 4 KiB
        except OSError:
            return None  # exited between open and read
        finally:
            os.close(descriptor)
        open_paren, close_paren = raw.find(b"("), raw.rfind(b")")
        fields = raw[close_paren + 2 :].split()
        if open_paren < 0 or len(fields) < 22:
            return None
        comm = raw[open_paren + 1 : close_paren].decode("utf-8", "replace")
        start = fields[19].decode()
        name = self._full_name(pid, comm, start, full_names)
        cpu_ticks = int(fields[11]) + int(fields[12])  # utime + stime
        return ProcessSample(
            (pid, float(start)), name, cpu_ticks / self.ticks_per_second, int(fields[21]) * self.page_size
        )

    def _full_name(self, pid: int, comm: str, start: str, full_names: Dict[Tuple[int, str, str], str]) -> str:
        # The kernel cuts comm at 15 bytes; like psutil, take the full name from argv[0] then.
        if len(comm) < 15:
            return comm
        cache_key = (pid, start, comm)
        name = self._full_names.get(cache_key)
        if name is None:
            name = comm
            try:
                with open(f"{self.proc}/{pid}/cmdline", "rb") as handle:
                    argv0 = handle.read().split(b"\x00", 1)[0].decode("utf-8", "replace")
                candidate = os.path.basename(argv0.split(" ", 1)[0])
                if candidate.startswith(comm):
                    name = candidate
            except OSError:
                pass
        full_names[cache_key] = name
        return name


class PsutilProcessScanner:
    """Portable scanner for macOS, Windows and BSDs."""

    def scan(self) -> List[ProcessSample]:
        samples = []
        for process in psutil.process_iter(["name", "cpu_times", "memory_info", "create_time"]):
            info = process.info
            if info["cpu_times"] is None or info["memory_info"] is None:
                continue  # access denied: nothing to report
            cpu = info["cpu_times"].user + info["cpu_times"].system
            samples.append(
                ProcessSample(
                    (process.pid, info["create_time"] or 0.0), info["name"] or "?", cpu, info["memory_info"].rss
                )
            )
        return samples


def top_apps(
    previous: Optional[Dict[Tuple[int, float], ProcessSample]],
    current: Iterable[ProcessSample],
    elapsed: float,
    top_n: int,
) -> List[AppUsage]:
    """Sums processes by name and ranks by CPU over the last interval, then by memory.

    A process absent from the previous scan started during the interval, so all of its CPU time
    belongs to it; on the very first scan (no previous) nothing has a delta yet.
    """
    cpu_by_name: Dict[str, float] = {}
    memory_by_name: Dict[str, int] = {}
    for sample in current:
        if previous is None or elapsed <= 0:
            used = 0.0
        else:
            before = previous.get(sample.key)
            used = sample.cpu_seconds - (before.cpu_seconds if before is not None else 0.0)
        cpu_by_name[sample.name] = cpu_by_name.get(sample.name, 0.0) + max(used, 0.0)
        memory_by_name[sample.name] = memory_by_name.get(sample.name, 0) + sample.rss_bytes
    scale = 100.0 / elapsed if previous is not None and elapsed > 0 else 0.0
    ranked = sorted(cpu_by_name, key=lambda name: (cpu_by_name[name], memory_by_name[name], name), reverse=True)
    return [AppUsage(name, round(cpu_by_name[name] * scale, 3), memory_by_name[name]) for name in ranked[:top_n]]


class Sampler:
    """Takes one snapshot per cycle; CPU figures are deltas against the previous cycle."""

    def __init__(self, top_n: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.top_n = top_n
        self.clock = clock
        self.scanner = (
            LinuxProcessScanner()
            if sys.platform.startswith("linux") and os.path.isdir("/proc/self")
            else PsutilProcessScanner()
        )
        self._previous: Optional[Dict[Tuple[int, float], ProcessSample]] = None
        self._previous_time = 0.0
        self.boot_time = psutil.boot_time()  # fixed for the life of the process
        psutil.cpu_percent(interval=None)  # starts psutil's own delta for the total

    def sample(self) -> Snapshot:
        started = self.clock()
        processes = self.scanner.scan() if self.top_n else []
        elapsed = started - self._previous_time
        apps = top_apps(self._previous, processes, elapsed, self.top_n) if self.top_n else []
        self._previous = {p.key: p for p in processes}
        self._previous_time = started
        snapshot = Snapshot(
            cpu_percent=psutil.cpu_percent(interval=None),
            memory=psutil.virtual_memory(),
            swap=psutil.swap_memory(),
            network=psutil.net_io_counters(pernic=True),
            load_average=os.getloadavg() if hasattr(os, "getloadavg") else psutil.getloadavg(),
            apps=apps,
            process_count=len(processes) if self.top_n else len(psutil.pids()),
            boot_time=self.boot_time,
            collection_seconds=self.clock() - started,
        )
        return snapshot


NETWORK_COUNTERS = (
    ("network_receive_bytes", "bytes_recv", "Bytes received on the interface."),
    ("network_transmit_bytes", "bytes_sent", "Bytes sent on the interface."),
    ("network_receive_packets", "packets_recv", "Packets received on the interface."),
    ("network_transmit_packets", "packets_sent", "Packets sent on the interface."),
    ("network_receive_errors", "errin", "Receive errors on the interface."),
    ("network_transmit_errors", "errout", "Transmit errors on the interface."),
)


class DeviceCollector:
    """prometheus_client collector over the latest snapshot: apps and interfaces come and go, so the
    families are built fresh from each snapshot instead of being kept as labelled gauges."""

    def __init__(self, device_serial: str, hostname: str, interval: float) -> None:
        self.identity = [label_safe(device_serial), label_safe(hostname)]
        self.interval = interval
        self.snapshot: Optional[Snapshot] = None
        self.push_failures = 0

    def _gauge(self, name: str, documentation: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, documentation, labels=["device_serial", "hostname"])
        family.add_metric(self.identity, value)
        return family

    def collect(self) -> Iterator[object]:
        snap = self.snapshot
        gauge = self._gauge
        yield gauge("push_monitor_interval_seconds", "The agent's push interval in seconds.", self.interval)
        info = GaugeMetricFamily("push_monitor_info", "Agent version.", labels=["device_serial", "hostname", "version"])
        info.add_metric(self.identity + [__version__], 1)
        yield info
        failures = CounterMetricFamily(
            "push_monitor_push_failures",
            "Pushes that failed since the agent started.",
            labels=["device_serial", "hostname"],
        )
        failures.add_metric(self.identity, self.push_failures)
        yield failures
        if snap is None:
            return
        yield gauge(
            "push_monitor_collection_duration_seconds", "Time the last collection took.", snap.collection_seconds
        )
        yield gauge("total_cpu_usage_percent", "CPU usage over all cores since the last push, 0-100.", snap.cpu_percent)
        yield gauge("total_memory_usage_percent", "Memory in use, percent of total.", snap.memory.percent)
        yield gauge("memory_total_bytes", "Total physical memory.", snap.memory.total)
        yield gauge(
            "memory_available_bytes", "Memory available to new processes without swapping.", snap.memory.available
        )
        yield gauge(
            "memory_used_bytes", "Memory in use (total - available).", snap.memory.total - snap.memory.available
        )
        yield gauge("swap_total_bytes", "Total swap space.", snap.swap.total)
        yield gauge("swap_used_bytes", "Swap space in use.", snap.swap.used)
        for minutes, value in zip((1, 5, 15), snap.load_average):
            yield gauge(f"load_average_{minutes}m", f"System load average over {minutes} minute(s).", value)
        yield gauge("boot_time_seconds", "Unix time the system booted.", snap.boot_time)
        yield gauge("process_count", "Processes running on the device.", snap.process_count)
        yield from self._app_families(snap.apps)
        yield from self._network_families(snap.network)

    def _app_families(self, apps: List[AppUsage]) -> Iterator[object]:
        labels = ["device_serial", "hostname", "app"]
        cpu = GaugeMetricFamily(
            "app_cpu_usage_percent",
            "CPU of the top apps by CPU, processes of one name summed; percent of one core.",
            labels=labels,
        )
        memory = GaugeMetricFamily(
            "app_memory_usage_mb", "Resident memory of the top apps by CPU in MiB.", labels=labels
        )
        for app in apps:
            cpu.add_metric(self.identity + [label_safe(app.name)], app.cpu_percent)
            memory.add_metric(self.identity + [label_safe(app.name)], round(app.memory_bytes / 1048576, 3))
        yield cpu
        yield memory

    def _network_families(self, network: Dict[str, object]) -> Iterator[object]:
        labels = ["device_serial", "hostname", "interface"]
        for name, attribute, documentation in NETWORK_COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=labels)
            for interface, counters in sorted(network.items()):
                family.add_metric(self.identity + [label_safe(interface)], getattr(counters, attribute))
            yield family


# --------------------------------------------------------------------------------------------
# Pushing
# --------------------------------------------------------------------------------------------


def grouping_path(job: str, device_serial: str) -> str:
    """The Pushgateway URL path for the device's group.

    Values that are not plain are sent in the gateway's base64 form: prometheus_client's own
    escaping sends a space as '+', which the gateway keeps literally, and cannot carry '/' on old
    releases; base64 round-trips every UTF-8 value exactly.
    """
    segments = []
    for label, value in (("job", job), ("device_serial", device_serial)):
        if PLAIN_GROUPING_VALUE.fullmatch(value):
            segments.append(f"{label}/{value}")
        else:
            encoded = base64.urlsafe_b64encode(value.encode("utf-8")).decode("ascii")
            segments.append(f"{label}@base64/{encoded}")
    return "/metrics/" + "/".join(segments)


class PushgatewayClient:
    """PUT/DELETE one group over a kept-alive connection (a new TLS handshake every second would
    cost more than the collection itself)."""

    def __init__(self, config: Config, device_serial: str) -> None:
        parts = urlsplit(config.pushgateway_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.https else 80)
        self.path = parts.path.rstrip("/") + grouping_path(config.job, device_serial)
        self.timeout = config.timeout
        self.headers = {"Content-Type": EXPOSITION_CONTENT_TYPE, "User-Agent": f"{PROG}/{__version__}"}
        if config.username is not None:
            token = base64.b64encode(f"{config.username}:{config.password}".encode()).decode("ascii")
            self.headers["Authorization"] = "Basic " + token
        self.ssl_context = self._ssl_context(config) if self.https else None
        self._connection: Optional[http.client.HTTPConnection] = None

    @staticmethod
    def _ssl_context(config: Config) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=config.ca_file)
        if config.client_cert:
            context.load_cert_chain(config.client_cert, config.client_key)
        return context

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self.https:
                self._connection = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self.ssl_context
                )
            else:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def push(self, body: bytes) -> None:
        self._request("PUT", body)

    def delete(self) -> None:
        self._request("DELETE", None)

    def _request(self, method: str, body: Optional[bytes]) -> None:
        # A kept-alive connection may have been closed by the gateway (restart, idle timeout): one
        # immediate retry on a fresh connection tells that apart from a real outage.
        for attempt in (1, 2):
            try:
                connection = self._connect()
                connection.request(method, self.path, body=body, headers=self.headers)
                response = connection.getresponse()
                detail = response.read(512).decode("utf-8", "replace").strip()
                if response.will_close:
                    self.close()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as err:
                self.close()
                if attempt == 2:
                    raise PushError(f"connection lost: {err}", "connection") from None
            except ssl.SSLError as err:
                self.close()
                raise PushError(f"TLS error: {err.reason or err}", "tls") from None
            except socket.timeout:
                self.close()
                raise PushError(f"no answer within {self.timeout:g} s", "timeout") from None
            except OSError as err:
                self.close()
                raise PushError(f"cannot connect: {err.strerror or err}", "connection") from None
            except http.client.HTTPException as err:
                self.close()
                raise PushError(f"bad HTTP response: {err!r}", "protocol") from None
        if response.status in (401, 403):
            raise PushError(f"authentication failed (HTTP {response.status}): check the username and password", "auth")
        if not 200 <= response.status < 300:
            raise PushError(f"HTTP {response.status} {response.reason}: {detail[:200]}", f"http-{response.status}")


def require_dependencies() -> None:
    missing = [
        name for name, module in (("psutil", psutil), ("prometheus_client", CollectorRegistry)) if module is None
    ]
    if missing:
        raise ConfigError(
            f"missing Python package(s): {', '.join(missing)} (pip install -r files/requirements.txt, "
            "or apt install python3-psutil python3-prometheus-client)"
        )


class Agent:
    """The collect-and-push loop on a fixed monotonic schedule."""

    def __init__(
        self,
        config: Config,
        device_serial: str,
        hostname: Optional[str] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.sampler = Sampler(config.top_n, clock)
        self.collector = DeviceCollector(device_serial, hostname or socket.gethostname(), config.interval)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.client = PushgatewayClient(config, device_serial)
        self.stop = threading.Event()
        self._outage_kind: Optional[str] = None
        self._outage_started = 0.0
        self._failed_attempts = 0

    def collect(self) -> bytes:
        self.collector.snapshot = self.sampler.sample()
        return generate_latest(self.registry)

    def push_once(self) -> bool:
        """One cycle: collect, push, and log only the transitions between healthy and failing."""
        body = self.collect()
        try:
            self.client.push(body)
        except PushError as err:
            self.collector.push_failures += 1
            self._note_failure(err)
            return False
        if self._outage_kind is not None:
            log.info(
                "push to %s recovered after %d failed attempt(s) over %.1f s",
                self.config.pushgateway_url,
                self._failed_attempts,
                self.clock() - self._outage_started,
            )
        self._outage_kind = None
        self._failed_attempts = 0
        return True

    def _note_failure(self, err: PushError) -> None:
        if self._outage_kind is None:
            self._outage_started = self.clock()
        if err.kind != self._outage_kind:
            log.error(
                "push to %s failed: %s; retrying with backoff, next message on recovery or a different error",
                self.config.pushgateway_url,
                err,
            )
        else:
            log.debug("push failed again: %s", err)
        self._outage_kind = err.kind
        self._failed_attempts += 1

    def retry_delay(self) -> float:
        """Capped exponential backoff with jitter. The cap is the interval itself, so a returning
        gateway gets its first push within one interval and never more load than normal."""
        first = min(1.0, self.config.interval / 4)
        ceiling = min(self.config.interval, first * 2 ** (self._failed_attempts - 1))
        return ceiling * random.uniform(0.5, 1.0)

    def run(self, max_cycles: Optional[int] = None) -> None:
        interval = self.config.interval
        started = self.clock()
        # The first push waits a moment so its CPU figures are real deltas, not zeros.
        next_slot = started + min(interval, 1.0)
        cycles = 0
        while not self.stop.is_set() and (max_cycles is None or cycles < max_cycles):
            self._sleep_until(next_slot)
            if self.stop.is_set():
                break
            ok = self.push_once()
            cycles += 1
            now = self.clock()
            if ok:
                # Next slot on the fixed grid; slots missed by a slow cycle are skipped, not bursted.
                next_slot = started + (math.floor((now - started) / interval) + 1) * interval
            else:
                next_slot = now + self.retry_delay()

    def _sleep_until(self, deadline: float) -> None:
        remaining = deadline - self.clock()
        if remaining > 0:
            self.stop.wait(remaining)

    def delete_group(self) -> bool:
        try:
            self.client.delete()
        except PushError as err:
            log.error("could not delete the group from %s: %s", self.config.pushgateway_url, err)
            return False
        log.info("deleted the device's group from %s", self.config.pushgateway_url)
        return True


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def install_signal_handlers(agent: Agent) -> None:
    def handle(signum: int, _frame: object) -> None:
        if agent.stop.is_set():
            return  # already shutting down: let the group deletion finish
        agent.stop.set()
        raise ShutdownRequested(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def prime(agent: Agent) -> None:
    """For single-shot modes: a short baseline so CPU percentages are measured, not zero."""
    agent.sampler.sample()
    agent.stop.wait(min(agent.config.interval, 0.5))


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        config = parse_config(argv)
        logging.basicConfig(level=config.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        if config.print_serial:
            serial, source = resolve_device_serial(config.device_serial, config.state_dir)
            print(json.dumps({"device_serial": serial, "source": source}))
            return 0
        require_dependencies()
        serial, source = resolve_device_serial(config.device_serial, config.state_dir)
    except ConfigError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 2
    except OSError as err:
        sys.stderr.write(f"{PROG}: error: cannot keep a device id in the state directory: {err}\n")
        return 2
    log.info(
        "device_serial %r from %s; job %r; pushing to %s every %g s",
        serial,
        source,
        config.job,
        config.pushgateway_url,
        config.interval,
    )
    agent = Agent(config, serial)
    install_signal_handlers(agent)
    try:
        if config.print_only:
            prime(agent)
            sys.stdout.write(agent.collect().decode("utf-8"))
            return 0
        if config.once:
            prime(agent)
            return 0 if agent.push_once() else 1
        agent.run()
    except ShutdownRequested as reason:
        log.info("%s received, stopping", reason)
    if config.delete_on_exit:
        agent.client.close()
        agent.delete_group()
    agent.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
