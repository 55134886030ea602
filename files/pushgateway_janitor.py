#!/usr/bin/env python3
"""pushgateway_janitor: delete Pushgateway groups whose last push is older than a maximum age.

The Pushgateway keeps every group forever, so a device that was retired, re-imaged or renamed
would stay on dashboards (and keep a "silent device" alert firing) until someone deletes it.
Run it from a systemd timer on the monitoring server. Standard library only.
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
    pass


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pushgateway_janitor.py", allow_abbrev=False, description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--pushgateway",
        default=os.environ.get("PUSHGATEWAY_URL", "http://localhost:9091"),
        help="[env PUSHGATEWAY_URL]",
    )
    parser.add_argument(
        "--max-age",
        default=os.environ.get("JANITOR_MAX_AGE", "86400"),
        help="seconds since the last push [env JANITOR_MAX_AGE, default 86400]",
    )
    parser.add_argument(
        "--job", action="append", default=[], help="only groups of this job (repeatable; default: all jobs)"
    )
    parser.add_argument("--username", default=os.environ.get("PUSHGATEWAY_USERNAME"), help="[env PUSHGATEWAY_USERNAME]")
    parser.add_argument(
        "--password-file",
        default=os.environ.get("PUSHGATEWAY_PASSWORD_FILE"),
        help="[env PUSHGATEWAY_PASSWORD_FILE; else env PUSHGATEWAY_PASSWORD]",
    )
    parser.add_argument("--ca-file", default=os.environ.get("PUSHGATEWAY_CA_FILE"), help="[env PUSHGATEWAY_CA_FILE]")
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    args = parser.parse_args(argv)
    try:
        args.max_age = float(args.max_age)
    except ValueError:
        parser.error(f"--max-age {args.max_age!r}: not a number of seconds")
    if not math.isfinite(args.max_age) or args.max_age <= 0:
        parser.error(f"--max-age {args.max_age!r}: must be a number of seconds > 0")
    if not re.match(r"https?://[^/\s]+", args.pushgateway):
        parser.error(f"--pushgateway {args.pushgateway!r}: must be an http:// or https:// URL")
    return args


def group_path(labels: Dict[str, str]) -> str:
    """The group's URL path, job first; non-plain values in the gateway's base64 form."""
    ordered = [("job", labels["job"])] + sorted((k, v) for k, v in labels.items() if k != "job")
    parts = []
    for name, value in ordered:
        if PLAIN_VALUE.fullmatch(value):
            parts.append(f"{name}/{value}")
        else:
            parts.append(f"{name}@base64/{base64.urlsafe_b64encode(value.encode()).decode()}")
    return "/metrics/" + "/".join(parts)


def last_activity(group: Dict) -> float:
    """Unix time of the group's last push attempt, successful or not."""
    times = [0.0]
    for name in ("push_time_seconds", "push_failure_time_seconds"):
        for metric in group.get(name, {}).get("metrics", []):
            times.append(float(metric["value"]))
    return max(times)


def stale_groups(
    groups: List[Dict], max_age: float, now: float, jobs: Sequence[str]
) -> List[Tuple[Dict[str, str], float]]:
    stale = []
    for group in groups:
        labels = group["labels"]
        if jobs and labels.get("job") not in jobs:
            continue
        age = now - last_activity(group)
        if age > max_age:
            stale.append((labels, age))
    return stale


class Gateway:
    def __init__(self, url: str, username: Optional[str], password: Optional[str], ca_file: Optional[str]) -> None:
        self.url = url.rstrip("/")
        self.headers = {}
        if username:
            self.headers["Authorization"] = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.context = ssl.create_default_context(cafile=ca_file) if url.startswith("https") else None

    def request(self, method: str, path: str) -> bytes:
        request = urllib.request.Request(self.url + path, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            raise JanitorError(f"{method} {path}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError) as err:
            raise JanitorError(f"{method} {self.url}: {getattr(err, 'reason', err)}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    # A file wins over the environment; the password is never a flag (the process list shows flags).
    password = os.environ.get("PUSHGATEWAY_PASSWORD")
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as handle:
                password = handle.read().rstrip("\r\n")
        except OSError as err:
            sys.stderr.write(f"{PROG}: error: --password-file {args.password_file!r}: {err.strerror}\n")
            return 2
    gateway = Gateway(args.pushgateway, args.username, password, args.ca_file)
    try:
        groups = json.loads(gateway.request("GET", "/api/v1/metrics"))["data"]
        stale = stale_groups(groups, args.max_age, time.time(), args.job)
        for labels, age in stale:
            if not args.dry_run:
                gateway.request("DELETE", group_path(labels))
            log.info("%s group %s, last push %.0f s ago", "would delete" if args.dry_run else "deleted", labels, age)
    except JanitorError as err:
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 1
    log.info("%d of %d group(s) older than %g s", len(stale), len(groups), args.max_age)
    return 0


if __name__ == "__main__":
    sys.exit(main())
