#!/usr/bin/env python3
"""pushgateway_janitor: delete Pushgateway groups whose last push is older than a maximum age.

The Pushgateway keeps every group forever, so a device that was retired, re-imaged or renamed
would stay on dashboards (and keep a "silent device" alert firing) until someone deletes it.
Run it from a systemd timer on the monitoring server. Standard library only.

Like the agent, it is one standalone file by design (copied alone onto the server), so it builds
its own grouping path, login header and TLS context instead of importing the agent's or testkit's.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import re
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Sequence, Tuple

PROG = "pushgateway_janitor"
log = logging.getLogger(PROG)
PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.:-]+")


class JanitorError(Exception):
    """The gateway cannot be read or refused a request: one line, exit 1."""


class ConfigError(Exception):
    """Bad input: one line naming the flag or environment variable, exit 2."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; bad input here gets exactly one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{PROG}: error: {message}\n")
        sys.exit(2)


SETTINGS = {  # flag: environment variable, default
    "--pushgateway": ("PUSHGATEWAY_URL", "http://localhost:9091"),
    "--max-age": ("JANITOR_MAX_AGE", "86400"),
    "--username": ("PUSHGATEWAY_USERNAME", None),
    "--password-file": ("PUSHGATEWAY_PASSWORD_FILE", None),
    "--ca-file": ("PUSHGATEWAY_CA_FILE", None),
}


def parse_args(argv: Optional[Sequence[str]], env: Optional[Dict[str, str]] = None) -> argparse.Namespace:
    env = dict(os.environ if env is None else env)
    parser = OneLineErrorParser(prog="pushgateway_janitor.py", allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--pushgateway", help="[env PUSHGATEWAY_URL, default http://localhost:9091]")
    parser.add_argument("--max-age", help="seconds since the last push [env JANITOR_MAX_AGE, default 86400]")
    parser.add_argument(
        "--job", action="append", default=[], help="only groups of this job (repeatable; default: all jobs)"
    )
    parser.add_argument("--username", help="[env PUSHGATEWAY_USERNAME]")
    parser.add_argument("--password-file", help="[env PUSHGATEWAY_PASSWORD_FILE; else env PUSHGATEWAY_PASSWORD]")
    parser.add_argument("--ca-file", help="[env PUSHGATEWAY_CA_FILE]")
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    args = parser.parse_args(argv)
    sources = {}
    for flag, (env_name, default) in SETTINGS.items():
        attribute = flag[2:].replace("-", "_")
        if getattr(args, attribute) is not None:
            sources[attribute] = flag
        elif env.get(env_name):
            setattr(args, attribute, env[env_name])
            sources[attribute] = env_name
        else:
            setattr(args, attribute, default)
            sources[attribute] = flag
    args.max_age = parse_max_age(args.max_age, sources["max_age"])
    if not re.match(r"(?i)https?://[^/\s]+", args.pushgateway):
        raise ConfigError(f"{sources['pushgateway']}={args.pushgateway!r}: must be an http:// or https:// URL")
    args.password = read_password(args, env, sources)
    if args.username and not args.password:
        raise ConfigError(
            f"{sources['username']} is set but no password: use --password-file, PUSHGATEWAY_PASSWORD_FILE "
            "or PUSHGATEWAY_PASSWORD"
        )
    if args.password and not args.username:
        raise ConfigError("a password is set but no --username (or PUSHGATEWAY_USERNAME)")
    return args


def parse_max_age(raw: str, source: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{source}={raw!r}: not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{source}={raw!r}: must be a number of seconds > 0")
    return value


def read_password(args: argparse.Namespace, env: Dict[str, str], sources: Dict[str, str]) -> Optional[str]:
    """A file wins over the environment; the password is never a flag (the process list shows flags)."""
    if not args.password_file:
        return env.get("PUSHGATEWAY_PASSWORD") or None
    try:
        with open(args.password_file, encoding="utf-8") as handle:
            return handle.read().rstrip("\r\n") or None
    except OSError as err:
        raise ConfigError(f"{sources['password_file']}={args.password_file!r}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{sources['password_file']}={args.password_file!r}: not UTF-8 text") from None


def group_path(labels: Dict[str, str]) -> str:
    """The group's URL path, job first; non-plain values (and "." / "..") in the gateway's base64 form."""
    ordered = [("job", labels["job"])] + sorted((k, v) for k, v in labels.items() if k != "job")
    parts = []
    for name, value in ordered:
        if PLAIN_VALUE.fullmatch(value) and value not in (".", ".."):
            parts.append(f"{name}/{value}")
        else:
            parts.append(f"{name}@base64/{base64.urlsafe_b64encode(value.encode()).decode() or '='}")
    return "/metrics/" + "/".join(parts)


def last_activity(group: Dict) -> float:
    """Unix time of the group's last push attempt, successful or not; ValueError if it has none."""
    times = []
    for name in ("push_time_seconds", "push_failure_time_seconds"):
        for metric in group.get(name, {}).get("metrics", []):
            value = float(metric["value"])
            if not math.isfinite(value):
                raise ValueError(f"{name} is {metric['value']!r}")
            times.append(value)
    if not times:
        raise ValueError("no push_time_seconds")
    return max(times)


def listed_groups(raw: bytes) -> List[Dict]:
    """The groups of GET /api/v1/metrics; JanitorError if the answer is not that listing
    (a proxy's HTML page, a login form, another API)."""
    try:
        listing = json.loads(raw)
        groups = listing["data"]
    except (ValueError, TypeError, KeyError):
        raise JanitorError(
            f"GET /api/v1/metrics: not a Pushgateway listing (starts with {raw[:60]!r}); check --pushgateway"
        ) from None
    if not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("labels"), dict) and "job" in g["labels"] for g in groups
    ):
        raise JanitorError("GET /api/v1/metrics: 'data' is not a list of groups with labels; check --pushgateway")
    return groups


def stale_groups(
    groups: List[Dict], max_age: float, now: float, jobs: Sequence[str]
) -> Tuple[List[Tuple[Dict[str, str], float]], List[str]]:
    """(stale groups with their age, problems): a group without a readable push time is reported and kept."""
    stale, problems = [], []
    for group in groups:
        labels = group["labels"]
        if jobs and labels.get("job") not in jobs:
            continue
        try:
            age = now - last_activity(group)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            problems.append(f"group {labels}: unreadable push time ({err}); kept")
            continue
        if age > max_age:
            stale.append((labels, age))
    return stale, problems


class Gateway:
    def __init__(self, url: str, username: Optional[str], password: Optional[str], ca_file: Optional[str]) -> None:
        self.url = url.rstrip("/")
        self.headers = {}
        if username:
            self.headers["Authorization"] = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.context = ssl.create_default_context(cafile=ca_file) if url.lower().startswith("https") else None

    def request(self, method: str, path: str) -> bytes:
        request = urllib.request.Request(self.url + path, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as response:
                return response.read(16 * 1024 * 1024)
        except urllib.error.HTTPError as err:
            raise JanitorError(f"{method} {path}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise JanitorError(f"{method} {self.url}{path}: {getattr(err, 'reason', err)}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(argv)
    except ConfigError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 2
    gateway = Gateway(args.pushgateway, args.username, args.password, args.ca_file)
    try:
        groups = listed_groups(gateway.request("GET", "/api/v1/metrics"))
    except JanitorError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 1
    stale, problems = stale_groups(groups, args.max_age, time.time(), args.job)
    for problem in problems:
        log.error("%s", problem)
    failed = 0
    for labels, age in stale:
        if args.dry_run:
            log.info("would delete group %s, last push %.0f s ago", labels, age)
            continue
        try:  # one refused DELETE must not keep the later stale groups
            gateway.request("DELETE", group_path(labels))
        except JanitorError as err:
            log.error("could not delete group %s: %s", labels, err)
            failed += 1
            continue
        log.info("deleted group %s, last push %.0f s ago", labels, age)
    log.info("%d of %d group(s) older than %g s", len(stale), len(groups), args.max_age)
    if failed or problems:
        sys.stderr.write(f"{PROG}: error: {failed} delete(s) failed, {len(problems)} group(s) unreadable\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
