"""What the benchmarks (bench/) share: their servers' binaries checked before anything starts, the
machine a figure was measured on, the PASS/MISS wording, comma-separated options, and one way to end: the
lines as they come, or one error line."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple, Type


class BenchError(Exception):
    """The benchmark cannot run (a binary missing, a subject died): one line, exit 1."""


def require_binaries(*binaries: str) -> None:
    missing = [binary for binary in binaries if not os.access(binary, os.X_OK)]
    if missing:
        raise BenchError(f"{', '.join(missing)} not found: run `make host` (scripts/setup-host.sh) first")


def verdict(met: bool) -> str:
    """A target's verdict as every benchmark prints it."""
    return "PASS" if met else "MISS"


def comma_list(convert: Callable[[str], Any], valid: Callable[[List[Any]], bool], rule: str) -> Callable[[str], list]:
    """An argparse type: comma-separated values through convert that valid() accepts; anything else is one
    line naming the rule (exit 2)."""

    def parse(text: str) -> list:
        try:
            values = [convert(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            values = []
        if not values or not valid(values):
            raise argparse.ArgumentTypeError(f"{text!r}: {rule}")
        return values

    return parse


def machine(python_version: str = platform.python_version()) -> str:
    """CPUs and their model, kernel, Debian release and Python, as the benchmarks page names a machine."""
    model = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    debian = Path("/etc/debian_version")
    return (
        f"{os.cpu_count()} CPUs ({model[1] if model else '?'}), Linux {platform.release()}, "
        f"Debian {debian.read_text().strip() if debian.exists() else '?'}, Python {python_version}"
    )


def run_benchmark(name: str, lines: Callable[[], Iterator[str]], errors: Tuple[Type[Exception], ...] = ()) -> int:
    """Prints the lines as they come; exit 0. A BenchError, a testkit helper's AssertionError, an OSError
    or one of errors is one line on stderr and exit 1. SIGTERM unwinds like Ctrl-C, through every
    clean-up (finally blocks) of the benchmark."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with contextlib.closing(lines()) as output:
            for line in output:
                print(line, flush=True)
    except (BenchError, AssertionError, OSError, *errors) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 1
    return 0
