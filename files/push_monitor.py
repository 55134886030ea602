#!/usr/bin/env python3
"""push_monitor: collect host metrics and push them to a Prometheus Pushgateway.

One group per device (grouping key: job + device_serial), pushed with PUT on a fixed schedule.
Runs standalone (`python3 push_monitor.py --help`) or as the systemd service the Ansible role installs.
Depends only on psutil (a current release or the Debian 12 / Ubuntu 22.04 package); the exposition
text and the HTTP transport are the standard library's. It is one standalone file by design
(devices get this file alone), so it keeps its own grouping path, login header and TLS context; the
janitor and the controller-side testkit/ have theirs.
"""

from __future__ import annotations

import signal

# Run as a program, the first thing it does is take SIGTERM/SIGINT/SIGHUP: one arriving while the
# modules load is recorded here and acted on by main() (a clean stop), never a kill or a traceback.
EARLY_SIGNALS: list = []
if __name__ == "__main__":
    for _signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(_signum, lambda signum, _frame: EARLY_SIGNALS.append(signum))

# Only standard modules at the top: psutil is loaded after the signal handlers are in place, and
# ssl only for an https:// gateway (see load_psutil and PushgatewayClient._ssl_context).
import argparse
import base64
import hashlib
import hmac
import json
import logging
import math
import os
import random
import re
import select
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import quote, urlsplit

__version__ = "1.0.0"
PROG = "push_monitor"
log = logging.getLogger(PROG)

DEFAULT_PUSHGATEWAY = "http://localhost:9091"
DEFAULT_INTERVAL = 1.0
DEFAULT_JOB = "device-metrics"
DEFAULT_TOP_N = 10
MAX_DEFAULT_TIMEOUT = 10.0
# Below 0.1 s a push schedule floods the gateway; above a day it is no longer monitoring.
MIN_INTERVAL, MAX_INTERVAL = 0.1, 86400.0
# Every app is two series on the gateway and in Prometheus: a bound on the device's cardinality.
MAX_TOP_N = 100
# Groups of metrics --disable can turn off (docs/agent.md lists the metrics of each).
METRIC_GROUPS = ("network", "disk", "diskio", "temperature", "battery")
# Bounds on label sets that depend on the hardware: a host with hundreds of mounts or disks
# (container hosts, SAN clients) reports the first ones, not a series explosion.
MAX_FILESYSTEMS = 32
MAX_DISKS = 32
MAX_SENSORS = 64
# Mounts, disks and whether sensors or a battery exist are looked up again this often, not every
# cycle: they change rarely, and looking costs more than reading the values.
REDISCOVER_SECONDS = 60.0
# Read-only images (snap packages, live media) are always full: their usage tells nothing.
IMAGE_FILESYSTEMS = frozenset({"squashfs", "iso9660", "udf", "cramfs", "erofs"})
# Not storage: the root mount of a container (overlay) is reported anyway, as "/".
PSEUDO_FILESYSTEMS = frozenset({"tmpfs", "devtmpfs", "ramfs", "proc", "sysfs", "overlay", "aufs", "nsfs", "rootfs"})
SYSTEM_STATE_DIR = "/var/lib/push-monitor"
SERIAL_STATE_FILE = "device-serial"
EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Keyed hash input for the machine-id fallback (as systemd's sd_id128_get_machine_app_specific):
# the raw machine-id is a secret-ish host identifier that must not leave the device.
MACHINE_ID_APP_KEY = b"push_monitor device serial v1"
# Values sent as they are in the group's URL path; "." and ".." are path steps, so they never are.
PLAIN_GROUPING_VALUE = re.compile(r"[A-Za-z0-9_.:-]+")
# An answer's head and body are read only this far; beyond it the connection is dropped instead.
MAX_RESPONSE_HEAD = 16384
MAX_RESPONSE_BODY = 65536
# The remote-write buffer's bounds (docs/agent.md: several days of the default metric set at 1 s fit).
DEFAULT_BUFFER_MAX_BYTES = 512 * 1048576
DEFAULT_BUFFER_MAX_AGE = 86400.0
MIN_BUFFER_BYTES, MAX_BUFFER_BYTES = 65536, 1 << 40
MIN_BUFFER_AGE, MAX_BUFFER_AGE = 60.0, 30 * 86400.0
# Remote write sends the cycles collected since the last send at most this often by default (when the
# interval is shorter): the labels of a series go once per request instead of once per cycle, which
# divides the bytes on the wire and the receiver's work per sample, at the cost of data arriving up
# to this late. Prometheus' own remote write waits as long (batch_send_deadline: 5s).
DEFAULT_SEND_INTERVAL = 5.0


class ConfigError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


class PushError(Exception):
    """A push or delete that did not reach the gateway or was refused by it."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ShutdownRequested(BaseException):
    """Raised from the SIGTERM/SIGINT handler so that a blocked wait or request ends at once; a
    BaseException (as KeyboardInterrupt) so that no `except Exception` on the way swallows it."""


# --------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------


class Signals:
    """SIGTERM/SIGINT request a clean stop; SIGHUP is logged and ignored.

    The handler raises ShutdownRequested only inside an interruptible() block (the schedule and
    its pushes) and only once: a second signal, or one that lands while the agent starts up or
    cleans up, merely records the request, so no signal ever escapes as a traceback or a kill.
    """

    def __init__(self) -> None:
        self.requested: Optional[str] = None
        self.hangups = 0
        self._interruptible = False

    def install(self, early: Sequence[int] = ()) -> None:
        """Takes over the handlers; signals that arrived before (at import) count as if now."""
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._handle)
        for signum in early:
            self._handle(signum, None)

    def _handle(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self.hangups += 1  # logged by the loop: writing to stderr from a handler can re-enter a write
            return
        if self.requested is None:
            self.requested = signal.Signals(signum).name
        if self._interruptible:
            self._interruptible = False
            raise ShutdownRequested(self.requested)

    def check(self) -> None:
        if self.requested is not None:
            raise ShutdownRequested(self.requested)

    def interruptible(self, action: Callable[[], None]) -> None:
        self._interruptible = True  # before the check: a signal in between then raises itself
        try:
            self.check()
            action()
        finally:
            self._interruptible = False


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


class Config(NamedTuple):
    pushgateway_url: str = DEFAULT_PUSHGATEWAY
    interval: float = DEFAULT_INTERVAL
    job: str = DEFAULT_JOB
    top_n: int = DEFAULT_TOP_N
    timeout: float = 0.8
    device_serial: Optional[str] = None
    username: Optional[str] = None
    password: Optional[str] = None
    ca_file: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    state_dir: Optional[str] = None
    log_level: str = "INFO"
    once: bool = False
    print_only: bool = False
    print_serial: bool = False
    delete_on_exit: bool = False
    disabled: FrozenSet[str] = frozenset()
    remote_write_url: Optional[str] = None
    buffer_max_bytes: int = DEFAULT_BUFFER_MAX_BYTES
    buffer_max_age: float = DEFAULT_BUFFER_MAX_AGE
    send_interval: Optional[float] = None  # remote write: seconds between sends, >= interval

    def __repr__(self) -> str:
        shown = (  # the password never appears in a log or a traceback
            f"{name}={'***' if name == 'password' and value else repr(value)}" for name, value in self._asdict().items()
        )
        return f"Config({', '.join(shown)})"


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; bad input here gets exactly one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog.split('.')[0]}: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="push_monitor.py",
        allow_abbrev=False,  # "--password x" must not silently become --password-file
        description="Collect CPU, memory, network and top-N process metrics and push them to a "
        "Prometheus Pushgateway, one group per device (job + device_serial).",
        epilog="Precedence: flag > environment variable > default. The password is never a flag: "
        "use --password-file or PUSHGATEWAY_PASSWORD. Exit status: 0 ok, 1 push failed (--once), "
        "2 bad input. SIGTERM/SIGINT stop it cleanly (exit 0); SIGHUP is logged and ignored.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--pushgateway",
        metavar="URL",
        help=f"Pushgateway URL, http:// or https:// [env PUSHGATEWAY_URL, default {DEFAULT_PUSHGATEWAY}]",
    )
    add(
        "--remote-write",
        metavar="URL",
        help="send with Prometheus remote write to this URL (e.g. https://server:9090/api/v1/write) instead of "
        "a Pushgateway; samples the server does not take are buffered on disk [env REMOTE_WRITE_URL]",
    )
    add(
        "--buffer-max-bytes",
        metavar="BYTES",
        help=f"remote write: bound on the buffer on disk [env REMOTE_WRITE_BUFFER_MAX_BYTES, "
        f"default {DEFAULT_BUFFER_MAX_BYTES}]",
    )
    add(
        "--buffer-max-age",
        metavar="SECONDS",
        help=f"remote write: buffered samples older than this are dropped [env REMOTE_WRITE_BUFFER_MAX_AGE, "
        f"default {DEFAULT_BUFFER_MAX_AGE:g}]",
    )
    add(
        "--remote-write-send-interval",
        metavar="SECONDS",
        help=f"remote write: send the cycles collected since the last send at most this often, at least the "
        f"interval [env REMOTE_WRITE_SEND_INTERVAL, default max(interval, {DEFAULT_SEND_INTERVAL:g})]",
    )
    add(
        "--interval",
        metavar="SECONDS",
        help=f"push interval, {MIN_INTERVAL:g} to {MAX_INTERVAL:g} [env PUSH_INTERVAL, default {DEFAULT_INTERVAL:g}]",
    )
    add("--job", metavar="NAME", help=f"job label of the device's group [env DEVICE_JOB, default {DEFAULT_JOB}]")
    add(
        "--top-n",
        metavar="N",
        help=f"number of top apps by CPU to report, 0 to {MAX_TOP_N} [env TOP_N, default {DEFAULT_TOP_N}]",
    )
    add("--device-serial", metavar="SERIAL", help="override the detected hardware serial [env DEVICE_SERIAL]")
    add(
        "--timeout",
        metavar="SECONDS",
        help="bound on each push (connect, send, answer), shorter than the interval "
        "[env PUSH_TIMEOUT, default min(0.8 x interval, 10)]",
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
        help="where a generated device id and the remote-write buffer are kept "
        f"[env STATE_DIRECTORY (systemd: the first of its list), "
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
    add(
        "--delete-on-exit",
        action="store_true",
        help="delete the device's group from the gateway on SIGTERM/SIGINT (bounded by --timeout)",
    )
    add(
        "--disable",
        metavar="GROUPS",
        help=f"metric groups not to collect, comma-separated: {', '.join(METRIC_GROUPS)} [env PUSH_DISABLE]",
    )
    add("--version", action="version", version=f"{PROG} {__version__}")
    return parser


# File paths may be any bytes; everything else ends up in a URL, a header or a label, which are UTF-8.
PATH_SETTINGS = frozenset({"--password-file", "--ca-file", "--client-cert", "--client-key", "--state-dir"})


def _pick(args: argparse.Namespace, flag: str, env: Dict[str, str], env_name: str) -> Tuple[Optional[str], str]:
    """Returns the winning raw value and the name to blame if it is bad."""
    value, source = getattr(args, flag.lstrip("-").replace("-", "_")), flag
    if value is None:
        value, source = env.get(env_name) or None, env_name
    if value is not None and flag not in PATH_SETTINGS:
        require_utf8(value, source)
    return value, source


def require_utf8(value: str, source: str) -> str:
    """argv and the environment arrive with undecodable bytes as lone surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{source}: not valid UTF-8 text") from None
    return value


def parse_disabled_groups(raw: str, source: str) -> FrozenSet[str]:
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRIC_GROUPS]
    if unknown:
        known = ", ".join(METRIC_GROUPS)
        raise ConfigError(f"{source}={raw!r}: unknown metric group(s) {', '.join(unknown)}; known: {known}")
    return frozenset(names)


def parse_number(raw: str, source: str, low: float, high: float, unit: str = "seconds") -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{source}={raw!r}: not a number of {unit}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ConfigError(f"{source}={raw!r}: must be between {low:g} and {high:g} {unit}")
    return value


def parse_top_n(raw: str, source: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{source}={raw!r}: not a whole number") from None
    if not 0 <= value <= MAX_TOP_N:
        raise ConfigError(f"{source}={raw!r}: must be between 0 and {MAX_TOP_N}")
    return value


def validate_url(raw: str, source: str) -> str:
    """Returns the URL normalised: lower-case scheme, no trailing slash, the path percent-encoded."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https"):  # urlsplit lower-cases the scheme
        raise ConfigError(f"{source}={raw!r}: must start with http:// or https://")
    try:
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        raise ConfigError(f"{source}={raw!r}: invalid port") from None
    host = parts.hostname or ""
    if not host or (port is None and parts.netloc.endswith(":")):
        raise ConfigError(f"{source}={raw!r}: no host name")
    if port == 0:
        raise ConfigError(f"{source}={raw!r}: port must be between 1 and 65535")
    if not re.fullmatch(r"[A-Za-z0-9._:-]+", host):
        raise ConfigError(f"{source}={raw!r}: host must be a DNS name or an IP address (IDN in its xn-- form)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(
            f"{source}={raw!r}: give only scheme, host, port and path (credentials go in --username / --password-file)"
        )
    # A reverse proxy's prefix may hold spaces or non-ASCII: sent percent-encoded, as a browser does.
    path = quote(parts.path.rstrip("/"), safe="/%!$&'()*+,;=:@-._~")
    return f"{parts.scheme}://{parts.netloc}{path}"


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
    if password_file:
        password: Optional[str] = read_password(password_file, source)
    else:
        password = require_utf8(env.get("PUSHGATEWAY_PASSWORD") or "", "PUSHGATEWAY_PASSWORD") or None
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
        raise ConfigError("--ca-file / --client-cert / --client-key need an https:// server URL")
    if bool(files["client_cert"]) != bool(files["client_key"]):
        raise ConfigError("--client-cert and --client-key go together")
    return files


def _state_dir(args: argparse.Namespace, env: Dict[str, str]) -> Optional[str]:
    if args.state_dir:
        return args.state_dir  # a flag is one path, colons included
    # systemd passes a colon-separated list when a unit sets several StateDirectory= entries.
    return (env.get("STATE_DIRECTORY") or "").split(":")[0] or None


def parse_config(argv: Optional[Sequence[str]] = None, env: Optional[Dict[str, str]] = None) -> Config:
    """Flags over environment over defaults; raises ConfigError before any network traffic."""
    env = dict(os.environ if env is None else env)
    args = build_parser().parse_args(argv)

    raw, source = _pick(args, "--pushgateway", env, "PUSHGATEWAY_URL")
    url = validate_url(raw if raw is not None else DEFAULT_PUSHGATEWAY, source)
    gateway_set = raw is not None
    raw, source = _pick(args, "--interval", env, "PUSH_INTERVAL")
    interval = parse_number(raw, source, MIN_INTERVAL, MAX_INTERVAL) if raw is not None else DEFAULT_INTERVAL
    remote_write = _remote_write_settings(args, env, gateway_set, interval)
    raw, source = _pick(args, "--job", env, "DEVICE_JOB")
    job = raw if raw is not None else DEFAULT_JOB
    if not job.strip():
        raise ConfigError(f"{source}: job name must not be empty")
    raw, source = _pick(args, "--top-n", env, "TOP_N")
    top_n = parse_top_n(raw, source) if raw is not None else DEFAULT_TOP_N
    raw, source = _pick(args, "--timeout", env, "PUSH_TIMEOUT")
    timeout = parse_number(raw, source, 0.001, MAX_INTERVAL) if raw is not None else None
    if timeout is None:
        timeout = min(0.8 * interval, MAX_DEFAULT_TIMEOUT)
    elif timeout >= interval:
        raise ConfigError(f"{source}={raw!r}: push timeout must be shorter than the interval ({interval:g} s)")
    serial, source = _pick(args, "--device-serial", env, "DEVICE_SERIAL")
    if serial is not None and not serial.strip():
        raise ConfigError(f"{source}: device serial must not be blank")
    level, source = _pick(args, "--log-level", env, "LOG_LEVEL")
    level = (level or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{source}={level!r}: must be DEBUG, INFO, WARNING or ERROR")
    raw, source = _pick(args, "--disable", env, "PUSH_DISABLE")
    disabled = parse_disabled_groups(raw, source) if raw is not None else frozenset()
    username, password = _credentials(args, env)
    if remote_write and args.delete_on_exit:
        raise ConfigError("--delete-on-exit deletes a Pushgateway group: it does not apply to --remote-write")
    tls = _tls_files(args, env, remote_write.get("remote_write_url") or url)
    return Config(
        pushgateway_url=url, interval=interval, job=job, top_n=top_n, timeout=timeout,
        device_serial=serial, username=username, password=password, state_dir=_state_dir(args, env),
        log_level=level, once=args.once, print_only=args.print_only, print_serial=args.print_serial,
        delete_on_exit=args.delete_on_exit, disabled=disabled, **tls, **remote_write,
    )  # fmt: skip


def _remote_write_settings(
    args: argparse.Namespace, env: Dict[str, str], gateway_set: bool, interval: float
) -> Dict[str, Any]:
    """The remote-write URL, send interval and buffer bounds; empty for the Pushgateway transport."""
    raw, source = _pick(args, "--remote-write", env, "REMOTE_WRITE_URL")
    if raw is None:
        return {}
    if gateway_set:
        raise ConfigError("a device uses one transport: set --pushgateway (PUSHGATEWAY_URL) or --remote-write "
                          "(REMOTE_WRITE_URL), not both")  # fmt: skip
    settings: Dict[str, Any] = {"remote_write_url": validate_url(raw, source)}
    raw, source = _pick(args, "--buffer-max-bytes", env, "REMOTE_WRITE_BUFFER_MAX_BYTES")
    if raw is not None:
        if not raw.strip().isdigit():
            raise ConfigError(f"{source}={raw!r}: not a whole number of bytes")
        settings["buffer_max_bytes"] = int(parse_number(raw, source, MIN_BUFFER_BYTES, MAX_BUFFER_BYTES, "bytes"))
    raw, source = _pick(args, "--buffer-max-age", env, "REMOTE_WRITE_BUFFER_MAX_AGE")
    if raw is not None:
        settings["buffer_max_age"] = parse_number(raw, source, MIN_BUFFER_AGE, MAX_BUFFER_AGE)
    raw, source = _pick(args, "--remote-write-send-interval", env, "REMOTE_WRITE_SEND_INTERVAL")
    if raw is None:
        settings["send_interval"] = max(interval, DEFAULT_SEND_INTERVAL)
    else:
        settings["send_interval"] = parse_number(raw, source, MIN_INTERVAL, MAX_INTERVAL)
        if settings["send_interval"] < interval:
            raise ConfigError(f"{source}={raw!r}: must not be shorter than the interval ({interval:g} s)")
    return settings


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
    """Last resort: a random id, generated once and kept, so the device stays one series.

    An id that exists is never replaced: if it cannot be read, or holds no usable id, the agent
    stops with an error instead of turning the device into a new series.
    """
    path = os.path.join(state_dir, SERIAL_STATE_FILE)
    existing = _read_state_file(path)
    if existing is not None:
        return existing, f"state file {path}"
    os.makedirs(state_dir, mode=0o750, exist_ok=True)
    generated = str(uuid.uuid4())
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(generated + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # link, not rename: complete when it appears, and it fails instead of replacing an id that
        # another instance wrote meanwhile.
        os.link(temporary, path)
    except FileExistsError:
        return _read_state_file(path) or generated, f"state file {path}"  # pragma: no cover - a race
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    return generated, f"new state file {path}"


def _read_state_file(path: str) -> Optional[str]:
    """The kept id; None if there is none yet."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(4096)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ConfigError(
            f"cannot read the device id in {path}: {err.strerror}; fix its owner or mode (it is never replaced)"
        ) from None
    value = raw.decode("utf-8", "replace").strip().strip("\x00").strip()
    if not value or is_placeholder_serial(value) or "\ufffd" in value or len(value.splitlines()) != 1:
        raise ConfigError(f"{path} holds no usable device id; remove it to let the agent generate a new one")
    return value


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

# One process in a scan: its name (bytes, as the kernel keeps it), CPU time and resident memory
# in the scanner's units. Keyed by (pid, start time): a reused pid is a different process.
ProcessKey = Tuple[object, object]
ProcessTable = Dict[ProcessKey, Tuple[bytes, float, int]]


class AppUsage(NamedTuple):
    name: str
    cpu_percent: float
    memory_bytes: int


class FilesystemUsage(NamedTuple):
    mountpoint: str
    size_bytes: int
    available_bytes: int
    usage_percent: float


class Snapshot(NamedTuple):
    cpu_percent: float
    memory: object  # psutil.virtual_memory() result
    swap: object
    network: Dict[str, object]
    load_average: Tuple[float, float, float]
    apps: List[AppUsage]
    processes: int
    boot_time: float
    collection_seconds: float
    filesystems: List[FilesystemUsage] = []
    disks: Dict[str, Any] = {}
    temperatures: List[Tuple[str, float]] = []
    battery: Optional[Any] = None


def label_safe(text: str) -> str:
    """Label values must be UTF-8; bytes that are not (from /proc, hostnames, interface names)
    are kept as \\xNN escapes, so two different names never become one."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("ascii")


def trim_cut_character(comm: bytes) -> bytes:
    """The kernel cuts comm at 15 bytes, possibly inside a multibyte character: drop that part."""
    for back in (1, 2, 3):
        if back > len(comm):
            break
        byte = comm[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: look further back for the lead byte
            continue
        length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return comm[:-back] if byte >= 0xC0 and length > back else comm
    return comm


def cached_descriptor_budget() -> int:
    """How many /proc files the process scan may keep open: half of what the soft limit of open
    files leaves above a reserve for sockets, state and buffer files, at most 4,096."""
    try:
        import resource  # noqa: PLC0415 - POSIX only

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 0
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(0, min(4096, (soft - 64) // 2))


class LinuxProcessScanner:
    """Reads /proc/<pid>/stat once per process: name, CPU ticks and RSS pages in one small read.
    Nothing is decoded or converted beyond the three numbers, and only names the kernel cut at
    15 bytes cost a second read (of cmdline, once per process lifetime).

    Each process's stat file stays open between scans and is re-read at offset 0 (procfs renders it
    afresh): the path lookup in open() costs more than the read itself. A descriptor whose process
    has exited answers ESRCH, even when its pid was reused, so it is reopened by path and never
    reads another process. At most `max_open` descriptors are kept, well under the soft limit of
    open files; processes beyond that are opened and closed each scan as before."""

    def __init__(self, proc: str = "/proc", max_open: Optional[int] = None) -> None:
        self.proc = proc
        self.cpu_unit = 1.0 / os.sysconf("SC_CLK_TCK")  # seconds per tick
        self.memory_unit = os.sysconf("SC_PAGE_SIZE")  # bytes per page
        self.max_open = cached_descriptor_budget() if max_open is None else max_open
        self._long_names: Dict[Tuple[str, bytes, bytes], bytes] = {}
        self._open: Dict[str, int] = {}

    def close(self) -> None:
        for descriptor in self._open.values():
            os.close(descriptor)
        self._open = {}

    def _read_stat(self, pid: str, kept: Dict[str, int]) -> Optional[bytes]:
        descriptor = self._open.pop(pid, None)
        if descriptor is not None:
            try:
                raw = os.pread(descriptor, 4096, 0)  # the line is well under 4 KiB
            except OSError:  # the process exited (ESRCH): its pid may be a new process now
                os.close(descriptor)
            else:
                kept[pid] = descriptor
                return raw
        # os.open/os.read, not open(): no buffered file object per process.
        try:
            descriptor = os.open(f"{self.proc}/{pid}/stat", os.O_RDONLY)
        except OSError:
            return None  # exited between listdir and open
        try:
            raw = os.pread(descriptor, 4096, 0)
        except OSError:
            os.close(descriptor)
            return None  # exited between open and read
        if len(kept) < self.max_open:
            kept[pid] = descriptor
        else:
            os.close(descriptor)
        return raw

    def scan(self) -> ProcessTable:
        table: ProcessTable = {}
        long_names: Dict[Tuple[str, bytes, bytes], bytes] = {}
        kept: Dict[str, int] = {}
        read_stat = self._read_stat
        try:
            for entry in os.listdir(self.proc):
                if not entry.isdigit():
                    continue
                raw = read_stat(entry, kept)
                if raw is None:
                    continue
                close_paren = raw.rfind(b")")
                fields = raw[close_paren + 2 :].split(None, 22)
                if close_paren < 0 or len(fields) < 22:
                    continue
                name = raw[raw.find(b"(") + 1 : close_paren]
                if len(name) >= 15:
                    name = self._long_name(entry, fields[19], name, long_names)
                table[(entry, fields[19])] = (name, int(fields[11]) + int(fields[12]), int(fields[21]))
        finally:
            self.close()  # what is left open belongs to processes that are gone
            self._open = kept
        self._long_names = long_names  # drops names of processes that are gone
        return table

    def _long_name(self, pid: str, start: bytes, comm: bytes, long_names: Dict) -> bytes:
        # Like psutil: a comm of 15 bytes may be cut; argv[0] (its base name, or all of it for a
        # process that rewrote its title) then gives the full name if it starts with comm.
        cache_key = (pid, start, comm)
        name = self._long_names.get(cache_key)
        if name is None:
            name = trim_cut_character(comm)
            try:
                descriptor = os.open(f"{self.proc}/{pid}/cmdline", os.O_RDONLY)
                try:
                    argv0 = os.read(descriptor, 4096).split(b"\x00", 1)[0]
                finally:
                    os.close(descriptor)
            except OSError:
                argv0 = b""
            for candidate in (argv0.rsplit(b"/", 1)[-1], argv0):
                if candidate.startswith(comm):
                    name = candidate
                    break
        long_names[cache_key] = name
        return name


class PsutilProcessScanner:
    """Portable scanner for macOS, Windows and BSDs."""

    cpu_unit = 1.0
    memory_unit = 1

    def scan(self) -> ProcessTable:
        table: ProcessTable = {}
        psutil = load_psutil()
        for process in psutil.process_iter(["name", "cpu_times", "memory_info", "create_time"]):
            info = process.info
            if info["cpu_times"] is None or info["memory_info"] is None:
                continue  # access denied: nothing to report
            name = (info["name"] or "?").encode("utf-8", "surrogateescape")
            cpu = info["cpu_times"].user + info["cpu_times"].system
            table[(process.pid, info["create_time"] or 0.0)] = (name, cpu, info["memory_info"].rss)
        return table


def top_apps(
    previous: Optional[ProcessTable],
    current: ProcessTable,
    elapsed: float,
    top_n: int,
    *,
    cpu_unit: float = 1.0,
    memory_unit: int = 1,
) -> List[AppUsage]:
    """Sums processes by name and ranks by CPU over the last interval, then by memory.

    A process absent from the previous scan started during the interval, so all of its CPU time
    belongs to it; on the very first scan (no previous) nothing has a delta yet.
    """
    cpu_by_name: Dict[bytes, float] = {}
    memory_by_name: Dict[bytes, int] = {}
    measured = previous is not None and elapsed > 0
    before = (previous if measured else {}).get  # type: ignore[union-attr]
    for key, (name, cpu, memory) in current.items():
        used = 0.0
        if measured:
            earlier = before(key)
            used = cpu - earlier[1] if earlier is not None else cpu
            if used < 0:
                used = 0.0
        cpu_by_name[name] = cpu_by_name.get(name, 0.0) + used
        memory_by_name[name] = memory_by_name.get(name, 0) + memory
    scale = 100.0 * cpu_unit / elapsed if measured else 0.0
    ranked = sorted(cpu_by_name, key=lambda name: (cpu_by_name[name], memory_by_name[name], name), reverse=True)
    return [
        AppUsage(label_safe(name.decode("utf-8", "surrogateescape")), round(cpu_by_name[name] * scale, 3),
                 memory_by_name[name] * memory_unit)
        for name in ranked[:top_n]
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Filesystems, disks, temperatures, battery
# --------------------------------------------------------------------------------------------


def real_filesystems(partitions: Iterable[Any], is_dir: Optional[Callable[[str], bool]] = None) -> List[Any]:
    """The mounted filesystems worth reporting, at most MAX_FILESYSTEMS: block-device, ZFS and btrfs
    filesystems and the root (a container's overlay included); no pseudo, image or network
    filesystems (a hung NFS server must not stall the agent). A device mounted twice (bind mounts)
    counts once, under its shortest mountpoint; a path mounted over (systemd's ProtectHome) counts as
    what is on top; files bind-mounted into containers are skipped."""
    is_dir = is_dir or os.path.isdir
    visible: Dict[str, Any] = {}
    for part in partitions:  # in mount order: a later mount on the same path hides the earlier one
        visible[part.mountpoint] = part
    chosen: Dict[str, Any] = {}
    mountpoints = set()
    for part in sorted(visible.values(), key=lambda p: (len(p.mountpoint), p.mountpoint)):
        root = part.mountpoint == "/"
        storage = part.device.startswith("/dev/") or part.fstype in ("zfs", "btrfs")
        if part.fstype in IMAGE_FILESYSTEMS or not (root or (storage and part.fstype not in PSEUDO_FILESYSTEMS)):
            continue
        key = part.device if part.device.startswith("/dev/") else f"mount:{part.mountpoint}"
        if key in chosen or part.mountpoint in mountpoints or not is_dir(part.mountpoint):
            continue
        chosen[key] = part
        mountpoints.add(part.mountpoint)
        if len(chosen) == MAX_FILESYSTEMS:
            break
    return list(chosen.values())


def filesystem_usage(psutil: Any, partitions: Iterable[Any]) -> List[FilesystemUsage]:
    """Usage of the given filesystems (real_filesystems' choice); one gone or unreadable is skipped."""
    usages = []
    for part in partitions:
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except OSError as err:  # unreadable, gone since the mount table was read, stale
            log.debug("skipping filesystem %r: %s", part.mountpoint, err)
            continue
        if usage.total > 0:
            usages.append(FilesystemUsage(part.mountpoint, usage.total, usage.free, usage.percent))
    return usages


def physical_disks(counters: Dict[str, Any], sys_block: str = "/sys/block") -> Dict[str, Any]:
    """Whole physical disks only: Linux lists partitions in /proc/diskstats too, and loop, RAM,
    zram and device-mapper disks have no device behind them in sysfs. Elsewhere psutil's list."""
    if os.path.isdir(sys_block):
        counters = {
            name: value
            for name, value in counters.items()
            if os.path.exists(os.path.join(sys_block, name.replace("/", "!"), "device"))
        }
    return dict(sorted(counters.items())[:MAX_DISKS])


def temperature_readings(sensors: Dict[str, List[Any]]) -> List[Tuple[str, float]]:
    """(sensor, degrees Celsius) per reading: chip name, then its label when it has one (a
    Raspberry Pi reports its SoC as cpu_thermal; without hwmon sensors psutil reads the thermal
    zones). Two readings of one name (two NVMe drives) get #2, #3, ...; unreadable ones are skipped."""
    readings: List[Tuple[str, float]] = []
    seen: Dict[str, int] = {}
    for chip, entries in sorted(sensors.items()):
        for entry in entries:
            if entry.current is None or not math.isfinite(entry.current):
                continue
            name = f"{chip}/{entry.label}" if entry.label else chip
            seen[name] = seen.get(name, 0) + 1
            readings.append((name if seen[name] == 1 else f"{name}#{seen[name]}", float(entry.current)))
    return readings[:MAX_SENSORS]


def read_temperatures(psutil: Any) -> List[Tuple[str, float]]:
    read = getattr(psutil, "sensors_temperatures", None)  # absent on macOS and Windows
    return temperature_readings(read()) if read else []


def read_battery(psutil: Any) -> Optional[Any]:
    read = getattr(psutil, "sensors_battery", None)
    return read() if read else None


class Sampler:
    """Takes one snapshot per cycle; CPU figures are deltas against the previous cycle."""

    def __init__(
        self, top_n: int, clock: Callable[[], float] = time.monotonic, disabled: FrozenSet[str] = frozenset()
    ) -> None:
        self.psutil = psutil = load_psutil()
        self.top_n = top_n
        self.clock = clock
        self.disabled = disabled
        self._failing_groups: Dict[str, str] = {}
        linux = sys.platform.startswith("linux") and os.path.isdir("/proc/self")
        self.scanner = LinuxProcessScanner() if linux else PsutilProcessScanner()
        self._previous: Optional[ProcessTable] = None
        self._previous_time = 0.0
        self.boot_time = psutil.boot_time()  # fixed for the life of the process
        self._found: Dict[str, Tuple[float, Any]] = {}
        self._absent_since: Dict[str, float] = {}
        psutil.cpu_percent(interval=None)  # starts psutil's own delta for the total

    def sample(self) -> Snapshot:
        psutil = self.psutil
        started = self.clock()
        processes = self.scanner.scan()
        apps: List[AppUsage] = []
        if self.top_n:
            elapsed = started - self._previous_time
            scanner = self.scanner
            apps = top_apps(
                self._previous,
                processes,
                elapsed,
                self.top_n,
                cpu_unit=scanner.cpu_unit,
                memory_unit=scanner.memory_unit,
            )
        self._previous = processes
        self._previous_time = started
        return Snapshot(
            cpu_percent=psutil.cpu_percent(interval=None),
            memory=psutil.virtual_memory(),
            swap=psutil.swap_memory(),
            network=self._group("network", lambda: psutil.net_io_counters(pernic=True), {}),
            load_average=os.getloadavg() if hasattr(os, "getloadavg") else psutil.getloadavg(),
            apps=apps,
            processes=len(processes),
            boot_time=self.boot_time,
            filesystems=self._group("disk", self._filesystems, []),
            disks=self._group("diskio", self._disks, {}),
            temperatures=self._group("temperature", lambda: self._if_present("temperature", read_temperatures, []), []),
            battery=self._group("battery", lambda: self._if_present("battery", read_battery, None), None),
            collection_seconds=self.clock() - started,
        )

    def _discover(self, key: str, find: Callable[[], Any]) -> Any:
        """What find() returned within the last REDISCOVER_SECONDS, else find() again."""
        now = self.clock()
        found = self._found.get(key)
        if found is None or not 0 <= now - found[0] < REDISCOVER_SECONDS:
            found = self._found[key] = (now, find())
        return found[1]

    def _filesystems(self) -> List[FilesystemUsage]:
        psutil = self.psutil
        partitions = self._discover("disk", lambda: real_filesystems(psutil.disk_partitions(all=True)))
        return filesystem_usage(psutil, partitions)  # a mount gone since is skipped there

    def _disks(self) -> Dict[str, Any]:
        counters = self.psutil.disk_io_counters(perdisk=True) or {}
        names = self._discover("diskio", lambda: list(physical_disks(counters)))
        return {name: counters[name] for name in names if name in counters}

    def _if_present(self, group: str, read: Callable[[Any], Any], empty: Any) -> Any:
        """Hardware a host lacks (most VMs have no sensors, most machines no battery) is looked for
        again only every REDISCOVER_SECONDS; hardware it has is read every cycle."""
        now = self.clock()
        absent_since = self._absent_since.get(group)
        if absent_since is not None and 0 <= now - absent_since < REDISCOVER_SECONDS:
            return empty
        value = read(self.psutil)
        if value:
            self._absent_since.pop(group, None)
        else:
            self._absent_since[group] = now
        return value

    def _group(self, group: str, read: Callable[[], Any], empty: Any) -> Any:
        """One metric group's reading; a group that cannot be read is left out of the push (one
        warning per kind of failure, not one per cycle) and the others still go out."""
        if group in self.disabled:
            return empty
        try:
            value = read()
        except (OSError, ValueError, RuntimeError) as err:
            if self._failing_groups.get(group) != str(err):
                log.warning("cannot read the %s metrics, leaving them out: %s", group, err)
            self._failing_groups[group] = str(err)
            return empty
        self._failing_groups.pop(group, None)
        return value


# --------------------------------------------------------------------------------------------
# Exposition (text format 0.0.4)
# --------------------------------------------------------------------------------------------

NETWORK_COUNTERS = (
    ("network_receive_bytes_total", "bytes_recv", "Bytes received on the interface."),
    ("network_transmit_bytes_total", "bytes_sent", "Bytes sent on the interface."),
    ("network_receive_packets_total", "packets_recv", "Packets received on the interface."),
    ("network_transmit_packets_total", "packets_sent", "Packets sent on the interface."),
    ("network_receive_errors_total", "errin", "Receive errors on the interface."),
    ("network_transmit_errors_total", "errout", "Transmit errors on the interface."),
)


DISK_COUNTERS = (
    ("disk_read_bytes_total", "read_bytes", "Bytes read from the disk."),
    ("disk_written_bytes_total", "write_bytes", "Bytes written to the disk."),
    ("disk_reads_completed_total", "read_count", "Read operations completed on the disk."),
    ("disk_writes_completed_total", "write_count", "Write operations completed on the disk."),
)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value):
        return repr(float(value))
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


Labels = Tuple[Tuple[str, str], ...]


class Family(NamedTuple):
    name: str
    kind: str
    documentation: str
    samples: Sequence[Tuple[Labels, float]]  # (labels besides the device's, value)


class BufferState(NamedTuple):
    """The remote-write buffer as the agent reports it about itself."""

    samples: int
    disk_bytes: int
    oldest_age_seconds: float
    dropped_samples: int


class Exposition:
    """The metric families of a snapshot, rendered as the text format (the Pushgateway) or encoded as
    a remote-write request. Written here rather than with prometheus_client: importing that library
    alone costs the agent about 14 MB of memory and 130 ms of start-up, more than everything else
    together, for what is a few lines of formatting."""

    def __init__(
        self, device_serial: str, hostname: str, interval: float, send_interval: Optional[float] = None
    ) -> None:
        self.device_labels: Labels = (("device_serial", label_safe(device_serial)), ("hostname", label_safe(hostname)))
        self.labels = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in self.device_labels)
        self.interval = interval
        self.send_interval = send_interval  # remote write only
        self.push_failures = 0
        self.buffer: Optional[BufferState] = None  # set in remote-write mode
        self.started_at = round(time.time(), 3)

    def families(self, snap: Optional[Snapshot], collected_at: float) -> List[Family]:
        out: List[Family] = []
        self._one(out, "push_monitor_interval_seconds", "gauge", "The agent's push interval in seconds.", self.interval)
        if self.send_interval is not None:
            # The fleet rules allow a batching device's data to arrive this late before calling it silent.
            self._one(out, "push_monitor_send_interval_seconds", "gauge",
                      "Remote write: seconds between sends; samples arrive up to this late.",
                      self.send_interval)  # fmt: skip
        self._family(out, "push_monitor_info", "gauge", "Agent version.", [((("version", __version__),), 1)])
        # Device time, as the rollout's probe reads it: a push from before a restart cannot pass for
        # one of the restarted agent, whatever the clocks of controller and gateway say.
        self._one(out, "push_monitor_start_time_seconds", "gauge", "Unix time at which the agent started.",
                  self.started_at)  # fmt: skip
        self._one(
            out, "push_monitor_push_failures_total", "counter", "Pushes that failed since the agent started.",
            self.push_failures,
        )  # fmt: skip
        # Device time of the collection: the last push's age for either transport (the fleet rules).
        self._one(out, "push_monitor_collection_timestamp_seconds", "gauge",
                  "Unix time at which these samples were collected.", round(collected_at, 3))  # fmt: skip
        if self.buffer is not None:
            self._buffer(out, self.buffer)
        if snap is not None:
            self._snapshot(out, snap)
        return out

    def render(self, snap: Optional[Snapshot], collected_at: Optional[float] = None) -> bytes:
        return self.text(self.families(snap, time.time() if collected_at is None else collected_at))

    def text(self, families: Iterable[Family], timestamp_ms: Optional[int] = None, job: Optional[str] = None) -> bytes:
        """The text format 0.0.4; with timestamp_ms every sample carries it and with job its label (as
        remote write sends them; the Pushgateway takes the job from the group's path)."""
        lines: List[str] = []
        suffix = "" if timestamp_ms is None else f" {timestamp_ms}"
        labels = self.labels if job is None else f'job="{escape_label_value(label_safe(job))}",{self.labels}'
        for family in families:
            lines.append(f"# HELP {family.name} {family.documentation}")
            lines.append(f"# TYPE {family.name} {family.kind}")
            for extra, value in family.samples:
                extra_text = "".join(f',{name}="{escape_label_value(text)}"' for name, text in extra)
                lines.append(f"{family.name}{{{labels}{extra_text}}} {format_value(value)}{suffix}")
        lines.append("")
        return "\n".join(lines).encode("utf-8")

    @staticmethod
    def _buffer(out: List[Family], state: BufferState) -> None:
        out.append(Family("push_monitor_buffer_samples", "gauge",
                          "Samples waiting in the remote-write buffer.", [((), state.samples)]))  # fmt: skip
        out.append(Family("push_monitor_buffer_disk_bytes", "gauge",
                          "Bytes the remote-write buffer holds on disk.", [((), state.disk_bytes)]))  # fmt: skip
        out.append(Family("push_monitor_buffer_oldest_age_seconds", "gauge",
                          "Age of the oldest buffered sample, 0 when the buffer is empty.",
                          [((), round(state.oldest_age_seconds, 3))]))  # fmt: skip
        out.append(Family("push_monitor_buffer_dropped_samples_total", "counter",
                          "Samples dropped: buffer full or too old, or refused by the server (4xx).",
                          [((), state.dropped_samples)]))  # fmt: skip

    def _snapshot(self, out: List[Family], snap: Snapshot) -> None:
        one = self._one
        one(out, "push_monitor_collection_duration_seconds", "gauge", "Time the last collection took.",
            snap.collection_seconds)  # fmt: skip
        one(out, "total_cpu_usage_percent", "gauge", "CPU usage over all cores since the last push, 0-100.",
            snap.cpu_percent)  # fmt: skip
        memory, swap = snap.memory, snap.swap
        one(out, "total_memory_usage_percent", "gauge", "Memory in use, percent of total.", memory.percent)
        one(out, "memory_total_bytes", "gauge", "Total physical memory.", memory.total)
        one(out, "memory_available_bytes", "gauge", "Memory available to new processes without swapping.",
            memory.available)  # fmt: skip
        one(out, "memory_used_bytes", "gauge", "Memory in use (total - available).", memory.total - memory.available)
        one(out, "swap_total_bytes", "gauge", "Total swap space.", swap.total)
        one(out, "swap_used_bytes", "gauge", "Swap space in use.", swap.used)
        for minutes, value in zip((1, 5, 15), snap.load_average):
            one(out, f"load_average_{minutes}m", "gauge", f"System load average over {minutes} minute(s).", value)
        one(out, "boot_time_seconds", "gauge", "Unix time the system booted.", snap.boot_time)
        one(out, "system_processes", "gauge", "Processes on the device.", snap.processes)
        apps = [((("app", app.name),), app) for app in snap.apps]
        self._family(out, "app_cpu_usage_percent", "gauge",
                     "CPU of the top apps by CPU, processes of one name summed; percent of one core.",
                     [(labels, app.cpu_percent) for labels, app in apps])  # fmt: skip
        # The name breaks the base-unit convention on purpose: dashboards and rules read it by name.
        self._family(out, "app_memory_usage_mb", "gauge", "Resident memory of the top apps by CPU in MiB.",
                     [(labels, round(app.memory_bytes / 1048576, 3)) for labels, app in apps])  # fmt: skip
        interfaces = [(self._label("interface", name), counters) for name, counters in sorted(snap.network.items())]
        for name, attribute, documentation in NETWORK_COUNTERS:
            self._present_family(out, name, "counter", documentation,
                         [(labels, getattr(counters, attribute)) for labels, counters in interfaces])  # fmt: skip
        self._hardware(out, snap)

    def _hardware(self, out: List[Family], snap: Snapshot) -> None:
        """Families of hardware that may be absent (no disks in sysfs, no sensors, no battery) or
        disabled: written only with samples, so absent hardware is an absent series."""
        family = self._present_family
        mounts = [(self._label("mountpoint", fs.mountpoint), fs) for fs in snap.filesystems]
        family(out, "disk_usage_percent", "gauge", "Filesystem space in use, percent of what users can use (as df).",
               [(labels, fs.usage_percent) for labels, fs in mounts])  # fmt: skip
        family(out, "disk_size_bytes", "gauge", "Filesystem size.",
               [(labels, fs.size_bytes) for labels, fs in mounts])  # fmt: skip
        family(out, "disk_available_bytes", "gauge", "Filesystem space available to unprivileged users.",
               [(labels, fs.available_bytes) for labels, fs in mounts])  # fmt: skip
        disks = [(self._label("disk", name), counters) for name, counters in sorted(snap.disks.items())]
        for name, attribute, documentation in DISK_COUNTERS:
            family(out, name, "counter", documentation,
                   [(labels, getattr(counters, attribute)) for labels, counters in disks])  # fmt: skip
        family(out, "temperature_celsius", "gauge", "Temperature the sensor reports, degrees Celsius.",
               [(self._label("sensor", name), value) for name, value in snap.temperatures])  # fmt: skip
        battery = snap.battery
        if battery is not None:
            family(out, "battery_percent", "gauge", "Battery charge, percent.", [((), float(battery.percent))])
            if battery.power_plugged is not None:
                family(out, "battery_power_plugged", "gauge", "1 while on external power (AC), 0 on battery.",
                       [((), int(bool(battery.power_plugged)))])  # fmt: skip

    @staticmethod
    def _label(name: str, value: str) -> Labels:
        return ((name, label_safe(value)),)

    def _present_family(
        self, out: List[Family], name: str, kind: str, documentation: str, samples: Sequence[Tuple[Labels, float]]
    ) -> None:
        if samples:
            out.append(Family(name, kind, documentation, samples))

    @staticmethod
    def _one(out: List[Family], name: str, kind: str, documentation: str, value: float) -> None:
        out.append(Family(name, kind, documentation, [((), value)]))

    @staticmethod
    def _family(
        out: List[Family], name: str, kind: str, documentation: str, samples: Sequence[Tuple[Labels, float]]
    ) -> None:
        out.append(Family(name, kind, documentation, samples))


# --------------------------------------------------------------------------------------------
# Pushing
# --------------------------------------------------------------------------------------------


def grouping_path(job: str, device_serial: str) -> str:
    """The Pushgateway URL path for the device's group.

    Values that are not plain are sent in the gateway's base64 form: "." and ".." would be
    resolved as path steps (answered with a redirect), a space or "/" would change the path, and
    prometheus_client's own escaping sends a space as '+', which the gateway keeps literally.
    base64 round-trips every UTF-8 value exactly; the empty value is "=", as the gateway defines.
    """
    segments = []
    for label, value in (("job", job), ("device_serial", device_serial)):
        if PLAIN_GROUPING_VALUE.fullmatch(value) and value not in (".", ".."):
            segments.append(f"{label}/{value}")
        else:
            encoded = base64.urlsafe_b64encode(value.encode("utf-8")).decode("ascii") or "="
            segments.append(f"{label}@base64/{encoded}")
    return "/metrics/" + "/".join(segments)


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.x as the agent can read it."""


class Deadline:
    """One bound for a whole request: every connect, send and receive gets what is left of it,
    so a server that trickles bytes cannot stretch a request beyond the timeout."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def arm(self, sock: socket.socket) -> None:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("deadline passed")
        sock.settimeout(remaining)


class Response(NamedTuple):
    status: int
    reason: str
    body: bytes
    reusable: bool  # the body was read to its end and the server keeps the connection


class ResponseReader:
    """Reads one answer from a socket: the head, and the body only when its end is known and
    within MAX_RESPONSE_BODY. Anything else (a body without a length, a long one, bytes beyond
    the answer) is left unread and the connection marked not reusable, so the next request
    never starts out of step."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""

    def _fill(self) -> None:
        self.deadline.arm(self.sock)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        self.buffer += chunk

    def _take_until(self, marker: bytes, limit: int) -> bytes:
        while True:
            found = self.buffer.find(marker)
            if 0 <= found <= limit:
                taken, self.buffer = self.buffer[:found], self.buffer[found + len(marker) :]
                return taken
            if len(self.buffer) > limit:
                raise ProtocolError(f"no end of line within {limit} bytes")
            self._fill()

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        taken, self.buffer = self.buffer[:size], self.buffer[size:]
        return taken

    def read(self, method: str) -> Response:
        while True:
            status, reason, headers, keep_alive = self._head()
            if status >= 200:
                break
            if status == 101:
                raise ProtocolError("the server switched protocols")  # 100 Continue and the like are skipped
        if method == "HEAD" or status in (204, 304):
            return Response(status, reason, b"", keep_alive and not self.buffer)
        body, complete = self._body(headers)
        return Response(status, reason, body, keep_alive and complete and not self.buffer)

    def _head(self) -> Tuple[int, str, Dict[str, str], bool]:
        head = self._take_until(b"\r\n\r\n", MAX_RESPONSE_HEAD).decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        match = re.fullmatch(r"HTTP/1\.([01]) ([0-9]{3})(?: (.*))?", status_line)
        if match is None:
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        headers: Dict[str, str] = {}
        for line in header_lines:
            name, colon, value = line.partition(":")
            if not colon:
                raise ProtocolError(f"malformed header line: {line[:80]!r}")
            name = name.strip().lower()
            if name in headers and name in ("content-length", "transfer-encoding"):
                raise ProtocolError(f"repeated {name} header")
            headers[name] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (match.group(1) == "1" or "keep-alive" in connection)
        return int(match.group(2)), match.group(3) or "", headers, keep_alive

    def _body(self, headers: Dict[str, str]) -> Tuple[bytes, bool]:
        """The body and whether it was read to its end; an unframed or long body is not read."""
        if "transfer-encoding" in headers:
            if headers["transfer-encoding"].lower() != "chunked":
                return self.buffer[:MAX_RESPONSE_BODY], False
            return self._chunked()
        length = headers.get("content-length")
        if length is None:
            return self.buffer[:MAX_RESPONSE_BODY], False  # ends when the server closes: do not wait
        if not length.isdigit():
            raise ProtocolError(f"bad Content-Length {length[:40]!r}")
        if int(length) > MAX_RESPONSE_BODY:
            return self.buffer[:MAX_RESPONSE_BODY], False
        return self._take(int(length)), True

    def _chunked(self) -> Tuple[bytes, bool]:
        body = b""
        while True:
            size_line = self._take_until(b"\r\n", 1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_line[:40]!r}") from None
            if size == 0:
                while self._take_until(b"\r\n", MAX_RESPONSE_HEAD):  # trailers, up to the empty line
                    pass
                return body, True
            if len(body) + size > MAX_RESPONSE_BODY:
                return body, False
            body += self._take(size)
            if self._take(2) != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")


class HttpClient:
    """HTTP/1.1 requests to one server over a kept-alive connection (a new TLS handshake every second
    would cost more than the collection itself), with the device's login and TLS settings.

    Each request is one attempt bounded by the timeout as a whole; whatever goes wrong, the
    connection is dropped, and the next request (at the next slot) starts on a fresh one.
    """

    def __init__(self, config: Config, url: str) -> None:
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.https else 80)
        self.base_path = parts.path
        self.timeout = config.timeout
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if self.https else 80
        headers = {
            "Host": host if self.port == default_port else f"{host}:{self.port}",
            "User-Agent": f"{PROG}/{__version__}",
        }
        if config.username is not None:
            token = base64.b64encode(f"{config.username}:{config.password}".encode()).decode("ascii")
            headers["Authorization"] = "Basic " + token
        self.headers = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.ssl_context = self._ssl_context(config) if self.https else None
        self._socket: Optional[socket.socket] = None

    @staticmethod
    def _ssl_context(config: Config) -> object:
        import ssl  # noqa: PLC0415 - only for https: a plain-http device never pays for OpenSSL

        context = ssl.create_default_context(cafile=config.ca_file)
        if config.client_cert:
            context.load_cert_chain(config.client_cert, config.client_key)
        return context

    def close(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            finally:
                self._socket = None

    def request(self, method: str, path: str, body: Optional[bytes], body_headers: str = "") -> None:
        """One exchange; body_headers are the body's own header lines (type, encoding)."""
        deadline = Deadline(self.timeout)
        head = f"{method} {path} HTTP/1.1\r\n{self.headers}"
        if body is not None:
            head += f"{body_headers}Content-Length: {len(body)}\r\n"
        request = (head + "\r\n").encode("ascii") + (body or b"")
        try:
            sock = self._connection(deadline)
            deadline.arm(sock)
            sock.sendall(request)  # the timeout bounds the whole sendall
            response = ResponseReader(sock, deadline).read(method)
        except BaseException as err:  # ShutdownRequested included: a half-done exchange is never reused
            self.close()
            if isinstance(err, Exception):
                raise self._failure(err) from None
            raise
        if not response.reusable:
            self.close()
        self._check(response)

    def _connection(self, deadline: Deadline) -> socket.socket:
        if self._socket is not None and self._stale(self._socket):
            self.close()
        if self._socket is None:
            self._socket = self._connect(deadline)
        return self._socket

    @staticmethod
    def _stale(sock: socket.socket) -> bool:
        """Between requests an idle connection has nothing to say: readable means the server closed
        it (or sent bytes nobody asked for), so it is not reused."""
        pending = getattr(sock, "pending", None)
        if pending and pending():
            return True
        if hasattr(select, "poll"):  # select() fails on descriptors above 1023: the scan keeps many open
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])  # Windows: no poll()

    def _connect(self, deadline: Deadline) -> socket.socket:
        # Name resolution is the system resolver's, outside the deadline (see docs/agent.md).
        last_error: Optional[OSError] = None
        for family, kind, protocol, _, address in socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, protocol)
            try:
                deadline.arm(sock)
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.ssl_context is not None:
                    deadline.arm(sock)
                    sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]
                return sock
            except socket.timeout:
                sock.close()
                raise
            except OSError as err:
                sock.close()
                last_error = err
        raise last_error or OSError(f"no address for {self.host}")

    def _failure(self, err: Exception) -> PushError:
        if isinstance(err, socket.timeout):
            return PushError(f"no complete answer within {self.timeout:g} s", "timeout")
        if isinstance(err, ProtocolError):
            return PushError(f"bad HTTP response: {err}", "protocol")
        if self.https and type(err).__module__ == "ssl":
            return PushError(f"TLS error: {getattr(err, 'reason', None) or err}", "tls")
        if isinstance(err, socket.gaierror):
            return PushError(f"cannot resolve {self.host}: {err.strerror or err}", "connection")
        if isinstance(err, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return PushError(f"connection lost: {err.strerror or err}", "connection")
        if isinstance(err, OSError):
            return PushError(f"cannot connect: {err.strerror or err}", "connection")
        return PushError(f"bad HTTP response: {err!r}", "protocol")

    @staticmethod
    def _check(response: Response) -> None:
        if response.status in (401, 403):
            raise PushError(f"authentication failed (HTTP {response.status}): check the username and password", "auth")
        if not 200 <= response.status < 300:
            detail = response.body[:200].decode("utf-8", "replace").strip().replace("\n", " ")
            raise PushError(f"HTTP {response.status} {response.reason}: {detail}", f"http-{response.status}")


class PushgatewayClient(HttpClient):
    """PUT/DELETE the device's group at the Pushgateway."""

    def __init__(self, config: Config, device_serial: str) -> None:
        super().__init__(config, config.pushgateway_url)
        self.path = self.base_path + grouping_path(config.job, device_serial)

    def push(self, body: bytes) -> None:
        self.request("PUT", self.path, body, f"Content-Type: {EXPOSITION_CONTENT_TYPE}\r\n")

    def delete(self) -> None:
        self.request("DELETE", self.path, None)


REMOTE_WRITE_HEADERS = (
    "Content-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n"
)


class RemoteWriteClient(HttpClient):
    """POST snappy-compressed WriteRequests to a remote-write receiver."""

    def __init__(self, config: Config) -> None:
        super().__init__(config, config.remote_write_url or "")

    def write(self, compressed: bytes) -> None:
        self.request("POST", self.base_path or "/", compressed, REMOTE_WRITE_HEADERS)


def load_psutil() -> Any:
    """psutil, imported on first use: --print-serial runs before the role installs it, and the
    signal handlers are in place before its import."""
    try:
        import psutil  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            "missing Python package: psutil (pip install -r files/requirements.txt, or apt install python3-psutil)"
        ) from None
    return psutil


# --------------------------------------------------------------------------------------------
# Remote write: encoding and the buffer
# --------------------------------------------------------------------------------------------


def load_snappy() -> Tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    """(compress, decompress) in snappy's block format, from python-snappy (Debian's python3-snappy)
    or cramjam; imported only in remote-write mode."""
    try:
        import snappy  # noqa: PLC0415

        return snappy.compress, getattr(snappy, "uncompress", None) or snappy.decompress
    except ImportError:
        pass
    try:
        import cramjam  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            "remote write needs a snappy library: apt install python3-snappy, or pip install python-snappy"
        ) from None
    return (
        lambda data: bytes(cramjam.snappy.compress_raw(data)),
        lambda data: bytes(cramjam.snappy.decompress_raw(data)),
    )


def varint(value: int) -> bytes:
    """A protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes, position: int) -> Tuple[int, int]:
    """(the varint at position, the position after it)."""
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return bytes((tag << 3 | 2,)) + varint(len(payload)) + payload


# The tag byte of WriteRequest.timeseries and of TimeSeries.labels: both are field 1, length-delimited.
FIELD_1 = 1 << 3 | 2


class SeriesBatch:
    """The samples of one or more cycles, grouped by series: one TimeSeries per series with its samples
    in time order, so a request carries a series' labels once however many cycles it holds."""

    def __init__(self) -> None:
        self.series: Dict[bytes, List[bytes]] = {}  # encoded labels: encoded Sample fields
        self.samples = 0
        self.first_ms = 0  # collection time of the oldest cycle, 0 while empty

    def add(self, labels: bytes, samples: bytes, count: int = 1) -> None:
        kept = self.series.get(labels)
        if kept is None:
            self.series[labels] = [samples]
        else:
            kept.append(samples)
        self.samples += count

    def add_request(self, payload: bytes, samples: int, timestamp_ms: int) -> None:
        """Merges a serialized WriteRequest of this encoder (each TimeSeries: labels, then samples).
        Raises ValueError if it is not one."""
        position, size = 0, len(payload)
        try:
            while position < size:
                if payload[position] != FIELD_1:
                    raise ValueError("not a WriteRequest.timeseries field")
                length, start = read_varint(payload, position + 1)
                position = start + length
                if position > size:
                    raise IndexError
                split = start
                while split < position and payload[split] == FIELD_1:
                    label_length, label_start = read_varint(payload, split + 1)
                    split = label_start + label_length
                self.add(payload[start:split], payload[split:position], 0)
        except IndexError:
            raise ValueError("a truncated WriteRequest") from None
        self.samples += samples
        self.first_ms = self.first_ms or timestamp_ms

    def encode(self) -> bytes:
        """The serialized WriteRequest."""
        return b"".join(_field(1, labels + b"".join(samples)) for labels, samples in self.series.items())


class WriteRequestEncoder:
    """Prometheus' remote-write 1.0 WriteRequest, encoded by hand: the agent's few messages
    (WriteRequest.timeseries = 1; TimeSeries.labels = 1, samples = 2; Label.name = 1, value = 2;
    Sample.value = 1 as double, timestamp = 2 as int64 ms) do not justify the protobuf package.
    Encoded label sets are kept between cycles: only values and timestamps change."""

    MAX_CACHED_SERIES = 20000

    def __init__(self, job: str, device_labels: Labels) -> None:
        self.common = (("job", label_safe(job)), *device_labels)
        self._labels: Dict[Tuple[str, Labels], bytes] = {}

    def add(self, batch: SeriesBatch, families: Iterable[Family], timestamp_ms: int) -> None:
        """Adds one cycle's samples, all stamped timestamp_ms, to the batch."""
        timestamp = b"\x10" + varint(timestamp_ms)
        # TimeSeries.samples field and length, then Sample.value's tag: the same for every sample.
        head = b"\x12" + varint(9 + len(timestamp)) + b"\x09"
        pack = struct.pack
        for family in families:
            for extra, value in family.samples:
                batch.add(self._series_labels(family.name, extra), head + pack("<d", value) + timestamp)
        batch.first_ms = batch.first_ms or timestamp_ms

    def encode(self, families: Iterable[Family], timestamp_ms: int) -> Tuple[bytes, int]:
        """(serialized WriteRequest of one cycle, number of samples)."""
        batch = SeriesBatch()
        self.add(batch, families, timestamp_ms)
        return batch.encode(), batch.samples

    def _series_labels(self, name: str, extra: Labels) -> bytes:
        key = (name, extra)
        encoded = self._labels.get(key)
        if encoded is None:
            if len(self._labels) >= self.MAX_CACHED_SERIES:
                self._labels.clear()  # app names churn: a bound, not a leak
            pairs = sorted((("__name__", name), *self.common, *extra))
            encoded = b"".join(
                _field(1, _field(1, label.encode("utf-8")) + _field(2, text.encode("utf-8"))) for label, text in pairs
            )
            self._labels[key] = encoded
        return encoded


# A buffer record: payload length, CRC-32 of what follows the CRC, collection time (ms) of its oldest
# cycle, samples, then the snappy-compressed WriteRequest of one send (the cycles collected since the
# previous send, each series merged).
RECORD_HEADER = struct.Struct("<IIqI")
SEGMENT_SUFFIX = ".seg"
CURSOR_FILE = "cursor"
MAX_SEGMENT_BYTES = 4 * 1048576


class Segment:
    """One append-only file of records; its sample count and time range are known without reading it
    again (they are counted while writing, or by one scan of the headers on start)."""

    def __init__(self, path: str, size: int = 0, samples: int = 0, first_ms: int = 0, last_ms: int = 0) -> None:
        self.path = path
        self.size = size
        self.samples = samples
        self.first_ms = first_ms
        self.last_ms = last_ms


class Record(NamedTuple):
    timestamp_ms: int  # the oldest cycle's collection time
    samples: int
    payload: bytes  # snappy-compressed WriteRequest


class DiskBuffer:
    """Sends the server did not take, oldest first, in segment files under the state directory.

    Only an outage writes here. Each record is one os.write() of an O_APPEND file with its length
    and CRC, so a kill (or power loss) during a write leaves at most a torn last record, which a
    read ends at. A restart opens a new segment, never appends behind a torn tail. The replay
    position is a small cursor file. Bounded by max_bytes and max_age: the oldest go first, counted.
    """

    def __init__(self, directory: str, max_bytes: int, max_age: float, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.clock = clock
        self.segment_limit = max(4096, min(MAX_SEGMENT_BYTES, max_bytes // 8))
        self.dropped = 0
        self.segments: List[Segment] = []
        self._writer: Optional[int] = None  # descriptor of the last segment, once written this run
        self._read_offset = 0  # in segments[0]
        self._read_samples = 0  # samples of segments[0] before _read_offset
        self._next_sequence = 1
        self._load()

    # -- state --------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            names = sorted(name for name in os.listdir(self.directory) if name.endswith(SEGMENT_SUFFIX))
        except FileNotFoundError:
            return
        for name in names:
            segment = self._scan(os.path.join(self.directory, name))
            if segment.samples:
                self.segments.append(segment)
            else:
                os.unlink(segment.path)
            self._next_sequence = max(self._next_sequence, int(name[: -len(SEGMENT_SUFFIX)] or 0) + 1)
        cursor = self._read_cursor()
        if self.segments and cursor is not None and cursor[0] == os.path.basename(self.segments[0].path):
            self._read_offset, self._read_samples = cursor[1], cursor[2]

    @staticmethod
    def _scan(path: str) -> Segment:
        """The segment's complete records; a torn tail is left out (and its bytes are not counted)."""
        segment = Segment(path)
        with open(path, "rb") as handle:
            while True:
                header = handle.read(RECORD_HEADER.size)
                if len(header) < RECORD_HEADER.size:
                    break
                length, _, timestamp_ms, samples = RECORD_HEADER.unpack(header)
                if len(handle.read(length)) < length:
                    break
                segment.size += RECORD_HEADER.size + length
                segment.samples += samples
                segment.first_ms = segment.first_ms or timestamp_ms
                segment.last_ms = timestamp_ms
        torn = os.path.getsize(path) - segment.size
        if torn:
            log.warning("remote-write buffer: %s ends in a torn record (%d bytes), skipped", path, torn)
        return segment

    def _read_cursor(self) -> Optional[Tuple[str, int, int]]:
        try:
            with open(os.path.join(self.directory, CURSOR_FILE), encoding="ascii") as handle:
                name, offset, samples = handle.read().split()
            return name, int(offset), int(samples)
        except (OSError, ValueError):
            return None

    @property
    def samples(self) -> int:
        return sum(segment.samples for segment in self.segments) - self._read_samples

    @property
    def disk_bytes(self) -> int:
        return sum(segment.size for segment in self.segments)

    def oldest_age(self) -> float:
        if not self.segments:
            return 0.0
        return max(0.0, self.clock() - self.segments[0].first_ms / 1000.0)

    def state(self) -> BufferState:
        return BufferState(self.samples, self.disk_bytes, self.oldest_age(), self.dropped)

    # -- writing --------------------------------------------------------------------------------

    def append(self, record: Record) -> None:
        data = (
            RECORD_HEADER.pack(len(record.payload), _record_crc(record), record.timestamp_ms, record.samples)
            + record.payload
        )
        if self._writer is None or self.segments[-1].size + len(data) > self.segment_limit:
            self._open_segment()
        os.write(self._writer, data)  # type: ignore[arg-type]
        segment = self.segments[-1]
        segment.size += len(data)
        segment.samples += record.samples
        segment.first_ms = segment.first_ms or record.timestamp_ms
        segment.last_ms = record.timestamp_ms
        self._enforce_bounds()

    def _open_segment(self) -> None:
        self._close_writer()
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        path = os.path.join(self.directory, f"{self._next_sequence:012d}{SEGMENT_SUFFIX}")
        self._next_sequence += 1
        self._writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o640)
        self.segments.append(Segment(path))

    def _close_writer(self) -> None:
        if self._writer is not None:
            os.close(self._writer)
            self._writer = None

    def _enforce_bounds(self) -> None:
        oldest_kept_ms = (self.clock() - self.max_age) * 1000
        while len(self.segments) > 1 and (
            self.disk_bytes > self.max_bytes or self.segments[0].last_ms < oldest_kept_ms
        ):
            self._drop_first_segment()

    def _drop_first_segment(self) -> None:
        self.dropped += self.segments[0].samples - self._read_samples
        self._remove_first_segment()

    def _remove_first_segment(self) -> None:
        segment = self.segments.pop(0)
        if not self.segments:
            self._close_writer()
        os.unlink(segment.path)
        self._read_offset = self._read_samples = 0
        self._write_cursor()

    # -- replay ---------------------------------------------------------------------------------

    def peek(self, max_bytes: int) -> Tuple[List[Record], int]:
        """The oldest records (at least one, up to about max_bytes of payload) and the offset after
        them in the first segment. Too old records are dropped (counted) instead; a torn or corrupt
        rest of a segment ends it."""
        self._enforce_bounds()
        oldest_kept_ms = (self.clock() - self.max_age) * 1000
        while self.segments:
            segment = self.segments[0]
            records, offset, intact = self._read(segment.path, self._read_offset, max_bytes)
            fresh = [record for record in records if record.timestamp_ms >= oldest_kept_ms]
            stale = sum(record.samples for record in records) - sum(record.samples for record in fresh)
            if stale:
                self.dropped += stale
                self._advance(offset, stale)
            if fresh:
                return fresh, offset
            if stale:
                continue
            if not intact or offset >= segment.size:
                if not intact:
                    log.warning("remote-write buffer: %s ends in a torn or corrupt record; skipping its rest",
                                segment.path)  # fmt: skip
                    self.dropped += max(0, segment.samples - self._read_samples)
                if len(self.segments) == 1 and intact:
                    return [], offset  # the segment being written, read to its end
                self._remove_first_segment()
                continue
        return [], 0

    def commit(self, records: List[Record], offset: int) -> None:
        """The records peek() returned were delivered."""
        self._advance(offset, sum(record.samples for record in records))

    def _advance(self, offset: int, samples: int) -> None:
        self._read_offset = offset
        self._read_samples += samples
        segment = self.segments[0]
        if offset >= segment.size and (len(self.segments) > 1 or self._writer is None or not self.samples):
            self._remove_first_segment()
        else:
            self._write_cursor()

    def _write_cursor(self) -> None:
        path = os.path.join(self.directory, CURSOR_FILE)
        if not self.segments:
            if os.path.exists(path):
                os.unlink(path)
            return
        temporary = path + ".tmp"
        with open(temporary, "w", encoding="ascii") as handle:
            handle.write(f"{os.path.basename(self.segments[0].path)} {self._read_offset} {self._read_samples}\n")
        os.replace(temporary, path)

    @staticmethod
    def _read(path: str, offset: int, max_bytes: int) -> Tuple[List[Record], int, bool]:
        """(records from offset, offset after them, False if a torn or corrupt record ended the read)."""
        records: List[Record] = []
        taken = 0
        with open(path, "rb") as handle:
            handle.seek(offset)
            while not records or taken < max_bytes:
                header = handle.read(RECORD_HEADER.size)
                if not header:
                    return records, offset, True
                if len(header) < RECORD_HEADER.size:
                    return records, offset, False
                length, crc, timestamp_ms, samples = RECORD_HEADER.unpack(header)
                payload = handle.read(length)
                record = Record(timestamp_ms, samples, payload)
                if len(payload) < length or crc != _record_crc(record):
                    return records, offset, False
                records.append(record)
                offset += RECORD_HEADER.size + length
                taken += length
        return records, offset, True

    def close(self) -> None:
        self._close_writer()


def _record_crc(record: Record) -> int:
    return zlib.crc32(record.payload, zlib.crc32(struct.pack("<qI", record.timestamp_ms, record.samples)))


# Replay: at most one request of this much buffered (compressed) data per pause, the pause being the
# interval (at least 1 s) times a random factor, the first one spread over REPLAY_START_SPREAD seconds
# after a recovery, so a fleet reconnecting at once does not arrive at once.
REPLAY_BATCH_BYTES = 256 * 1024
REPLAY_MIN_PAUSE = 1.0
REPLAY_START_SPREAD = 10.0
BUFFER_DIR = "remote-write-buffer"
# Slot times are exact multiples of the interval; this absorbs the float error of adding them up.
SLOT_TOLERANCE = 1e-6


def keeps_for_later(err: PushError) -> bool:
    """What an outage looks like: no answer, a 5xx, 429, or a refused login (fixed by the operator,
    while the data waits). Any other 4xx refuses the batch itself: retrying it cannot help."""
    status = int(err.kind[5:]) if err.kind.startswith("http-") else 0
    return not (400 <= status < 500) or status == 429


class RemoteWriteTransport:
    """Collects each cycle into a batch and sends it once per send interval, one request with every
    cycle since the last send; what the server does not take goes to the DiskBuffer and is replayed,
    oldest first, while the server answers."""

    def __init__(self, config: Config, device_labels: Labels, clock: Callable[[], float]) -> None:
        self.compress, self.decompress = load_snappy()
        self.encoder = WriteRequestEncoder(config.job, device_labels)
        self.client = RemoteWriteClient(config)
        state_dir = config.state_dir or default_state_dir()
        self.buffer = DiskBuffer(os.path.join(state_dir, BUFFER_DIR), config.buffer_max_bytes, config.buffer_max_age)
        self.clock = clock
        self.send_interval = config.send_interval or config.interval
        self.batch = SeriesBatch()
        self.next_send: Optional[float] = None  # slot of the next send; None: the next cycle sends
        self.pause = max(config.interval, REPLAY_MIN_PAUSE)
        self.next_replay = clock() + random.uniform(0, REPLAY_START_SPREAD)
        self.refused_logged = False
        self.buffer_error_logged = False

    def add(self, families: List[Family], timestamp_ms: int) -> None:
        self.encoder.add(self.batch, families, timestamp_ms)

    def due(self, slot: Optional[float]) -> bool:
        """Whether the cycle of this slot sends (None: outside the schedule, always)."""
        return slot is None or self.next_send is None or slot + SLOT_TOLERANCE >= self.next_send

    def send(self, slot: Optional[float] = None) -> None:
        """The batch, as one request; raises PushError when it did not arrive (kept or dropped, see
        keeps_for_later). The batch stays in memory until then: a signal that interrupts the request
        leaves it for the shutdown's flush()."""
        if slot is not None:
            self.next_send = slot + self.send_interval
        batch = self.batch
        if not batch.samples:
            return
        compressed = self.compress(batch.encode())
        try:
            self.client.write(compressed)
        except PushError as err:
            # Kept before the batch is let go: a signal in between costs a duplicate, never the data.
            if keeps_for_later(err):
                self._keep(Record(batch.first_ms, batch.samples, compressed))
                self.batch = SeriesBatch()
                raise
            self.buffer.dropped += batch.samples  # logged by the agent, once per kind of failure
            self.batch = SeriesBatch()
            raise PushError(f"{err}; its {batch.samples} samples dropped (not retried)", err.kind) from None
        self.batch = SeriesBatch()

    def flush(self) -> None:
        """On a clean stop: the cycles not yet sent, in one attempt bounded by the timeout, else kept
        in the buffer (a refusal drops them, counted and logged)."""
        samples = self.batch.samples
        if not samples:
            return
        try:
            self.send()
        except PushError as err:
            kept = "kept in the buffer" if keeps_for_later(err) else "dropped"
            log.warning("stopping: the last %d samples were not sent (%s), %s", samples, err, kept)
            return
        log.info("stopping: sent the last %d samples", samples)

    def recovered(self) -> None:
        self.next_replay = self.clock() + random.uniform(0, REPLAY_START_SPREAD)

    def _keep(self, record: Record) -> None:
        try:
            self.buffer.append(record)
            self.buffer_error_logged = False
        except OSError as err:
            self.buffer.dropped += record.samples
            if not self.buffer_error_logged:
                log.error("cannot write the remote-write buffer in %s, dropping: %s", self.buffer.directory, err)
            self.buffer_error_logged = True

    def _refused(self, err: PushError, samples: int) -> None:
        self.buffer.dropped += samples
        if not self.refused_logged:
            log.error("the server refused a replayed batch, its %d samples dropped (not retried): %s", samples, err)
        self.refused_logged = True

    def replay(self, time_left: float) -> None:
        """At most one request of the backlog, its records merged per series, when one is due and a
        whole request fits in time_left."""
        now = self.clock()
        if not self.buffer.samples or now < self.next_replay or time_left <= self.client.timeout:
            return
        self.next_replay = now + self.pause * random.uniform(0.5, 1.5)
        try:
            records, offset = self.buffer.peek(REPLAY_BATCH_BYTES)
        except OSError as err:
            log.error("cannot read the remote-write buffer in %s: %s", self.buffer.directory, err)
            return
        if not records:
            return
        samples = sum(record.samples for record in records)
        try:
            self.client.write(self.compress(self._merged(records)))
            self.refused_logged = False
        except PushError as err:
            if keeps_for_later(err):
                log.debug("replay failed, kept for later: %s", err)
                return
            self._refused(err, samples)
        except ValueError as err:  # intact on disk (CRC) but not this encoder's: nothing can send it
            self.buffer.dropped += samples
            log.error("remote-write buffer: %d samples that cannot be read dropped: %s", samples, err)
        self.buffer.commit(records, offset)

    def _merged(self, records: List[Record]) -> bytes:
        """The records' WriteRequests as one, each series' samples together in time order."""
        batch = SeriesBatch()
        for record in records:
            batch.add_request(self.decompress(record.payload), record.samples, record.timestamp_ms)
        return batch.encode()

    def close(self) -> None:
        self.client.close()
        self.buffer.close()


class Agent:
    """The collect-and-push loop on a fixed monotonic schedule."""

    def __init__(
        self,
        config: Config,
        device_serial: str,
        hostname: Optional[str] = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        signals: Optional[Signals] = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.signals = signals or Signals()
        self.sampler = Sampler(config.top_n, clock, config.disabled)
        send_interval = config.send_interval if config.remote_write_url else None
        self.exposition = Exposition(device_serial, hostname or socket.gethostname(), config.interval, send_interval)
        self.remote_write: Optional[RemoteWriteTransport] = None
        if config.remote_write_url:
            self.remote_write = RemoteWriteTransport(config, self.exposition.device_labels, clock)
            self.client: HttpClient = self.remote_write.client
            self.target = config.remote_write_url
        else:
            self.client = PushgatewayClient(config, device_serial)
            self.target = config.pushgateway_url
        self._slot: Optional[float] = None  # the current slot while run() schedules
        self._slot_end: Optional[float] = None
        self._outage_kind: Optional[str] = None
        self._outage_started = 0.0
        self._failed_attempts = 0
        self._hangups_logged = 0

    def collect_families(self) -> Tuple[List[Family], int]:
        """This cycle's families and their collection time in ms (the remote-write timestamp)."""
        collected_at = time.time()
        snap = self.sampler.sample()
        if self.remote_write is not None:
            self.exposition.buffer = self.remote_write.buffer.state()
        return self.exposition.families(snap, collected_at), int(collected_at * 1000)

    def collect(self) -> bytes:
        """The text exposition of one cycle; in remote-write mode each sample carries its timestamp and
        the job label, as they are sent."""
        families, timestamp_ms = self.collect_families()
        if self.remote_write is None:
            return self.exposition.text(families)
        return self.exposition.text(families, timestamp_ms, self.config.job)

    def push_once(self) -> bool:
        """One cycle: collect and push once (remote write: add to the batch, sent when due), and log
        only the transitions between healthy and failing."""
        families, timestamp_ms = self.collect_families()
        try:
            if self.remote_write is not None:
                self.remote_write.add(families, timestamp_ms)
                if not self.remote_write.due(self._slot):
                    self._replay()
                    return True
                self.remote_write.send(self._slot)
            else:
                self.client.push(self.exposition.text(families))
        except PushError as err:
            self.exposition.push_failures += 1
            self._note_failure(err)
            return False
        if self._outage_kind is not None:
            log.info(
                "push to %s recovered after %d failed attempt(s) over %.1f s",
                self.target,
                self._failed_attempts,
                self.clock() - self._outage_started,
            )
            if self.remote_write is not None:
                self.remote_write.recovered()
        self._outage_kind = None
        self._failed_attempts = 0
        self._replay()
        return True

    def _replay(self) -> None:
        """Remote write, while the last send arrived: a part of the backlog if one is due."""
        if self.remote_write is not None and self._outage_kind is None:
            time_left = float("inf") if self._slot_end is None else self._slot_end - self.clock()
            self.remote_write.replay(time_left)

    def _note_failure(self, err: PushError) -> None:
        if self._outage_kind is None:
            self._outage_started = self.clock()
        if err.kind != self._outage_kind:
            log.error(
                "push to %s failed: %s; trying again each %s, next message on recovery or a different error",
                self.target,
                err,
                "interval" if self.remote_write is None else "send interval",
            )
        else:
            log.debug("push failed again: %s", err)
        self._outage_kind = err.kind
        self._failed_attempts += 1

    def run(self, max_cycles: Optional[int] = None) -> None:
        """One attempt per slot, whether the last one worked or not: an outage never costs the
        gateway more requests than health, and a returning gateway gets the next slot's push."""
        interval = self.config.interval
        started = self.clock()
        # The first push waits a moment so its CPU figures are real deltas, not zeros.
        next_slot = started + min(interval, 1.0)
        cycles = 0
        while max_cycles is None or cycles < max_cycles:
            self.signals.check()
            remaining = next_slot - self.clock()
            if remaining > 0:
                self.sleep(remaining)
            self._log_hangups()
            self._slot, self._slot_end = next_slot, next_slot + interval
            self.push_once()
            cycles += 1
            # Next slot on the fixed grid; slots missed by a slow cycle are skipped, not bursted.
            next_slot = started + (math.floor((self.clock() - started) / interval) + 1) * interval

    def _log_hangups(self) -> None:
        if self.signals.hangups != self._hangups_logged:
            self._hangups_logged = self.signals.hangups
            log.info("SIGHUP ignored: settings come from flags and the environment; restart the agent to change them")

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


def main(argv: Optional[Sequence[str]] = None) -> int:
    signals = Signals()
    signals.install(EARLY_SIGNALS)  # first: a signal during start-up is a clean stop, never a kill
    try:
        config = parse_config(argv)
        logging.basicConfig(level=config.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        if config.print_serial:
            serial, source = resolve_device_serial(config.device_serial, config.state_dir)
            print(json.dumps({"device_serial": serial, "source": source}))
            return 0
        load_psutil()
        if config.remote_write_url:
            load_snappy()
        serial, source = resolve_device_serial(config.device_serial, config.state_dir)
    except ConfigError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 2
    except OSError as err:
        sys.stderr.write(f"{PROG}: error: cannot keep a device id in the state directory: {err}\n")
        return 2
    sending = f"every {config.interval:g} s"
    if config.remote_write_url:
        sending = f"every {config.send_interval:g} s, collecting every {config.interval:g} s"
    log.info(
        "device_serial %r from %s; job %r; pushing to %s %s",
        serial,
        source,
        config.job,
        config.remote_write_url or config.pushgateway_url,
        sending,
    )
    agent = Agent(config, serial, signals=signals)
    return run_mode(agent, config, signals)


def run_mode(agent: Agent, config: Config, signals: Signals) -> int:
    status = 0
    try:
        if config.print_only or config.once:
            # A short baseline so CPU percentages are measured, not zero.
            agent.sampler.sample()
            signals.interruptible(lambda: agent.sleep(min(config.interval, 0.5)))
        if config.print_only:
            sys.stdout.write(agent.collect().decode("utf-8"))
        elif config.once:
            outcome: List[bool] = []
            signals.interruptible(lambda: outcome.append(agent.push_once()))
            status = 0 if outcome[0] else 1
        else:
            signals.interruptible(agent.run)
    except ShutdownRequested as reason:
        log.info("%s received, stopping", reason)
    if agent.remote_write is not None:
        # Not interruptible, as the deletion below: what was collected is sent or kept, never lost.
        if not config.print_only:
            agent.remote_write.flush()
        agent.remote_write.close()
    agent.client.close()
    if config.delete_on_exit and not config.print_only:
        # Not interruptible: a further signal is recorded and the deletion, bounded by the
        # timeout, still finishes.
        agent.delete_group()
        agent.client.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
