#!/usr/bin/env python3
"""Prints a short summary of a failed Molecule run from its log: each failed Ansible task that was
not ignored (play, task, then each host line with the result's msg), then Molecule's verdict lines
(the failed step and its command, the tasks that broke idempotence).

Usage: molecule_failures.py LOG [--max-lines N]
Meant for the end of a failed run, where CI shows only the last lines of the output.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Dict, List, Optional, Tuple

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Molecule frames the output of the commands it runs with a "  │ " border.
BORDER = re.compile(r"^  \u2502 ?")
HEADER = re.compile(r"^(PLAY|TASK) \[(.*)\]( \*+)?$")
FAILURE = re.compile(r"^(fatal|failed): \[")
VERDICT = re.compile(r"Executed: Failed|Idempotence test failed|^\* \[.*\] => ")
LINE_CHARS = 300


class Failure:
    """One `fatal:` or `failed:` line and, when Ansible printed the result indented, its lines."""

    def __init__(self, line: str) -> None:
        self.line = line
        self.body: List[str] = []
        self.ignored = False

    def collecting(self) -> bool:
        return self.line.endswith("{") and self.body[-1:] != ["}"]

    def msg(self) -> Optional[str]:
        text = self.line.split(" => ", 1)[1] if " => " in self.line else ""
        try:
            result = json.loads(text + "\n".join(self.body))
        except ValueError:
            return None
        msg = result.get("msg") if isinstance(result, dict) else None
        return None if msg is None else " ".join(str(msg).split())


def trim(text: str) -> str:
    return text if len(text) <= LINE_CHARS else text[: LINE_CHARS - 3] + "..."


def parse(lines: List[str]) -> Tuple[Dict[Tuple[str, str], List[Failure]], List[str]]:
    """Failures by (play, task), ignored ones included, and Molecule's verdict lines."""
    failures: Dict[Tuple[str, str], List[Failure]] = {}
    verdicts: List[str] = []
    play = task = ""
    current: Optional[Failure] = None
    for raw in lines:
        line = BORDER.sub("", ANSI.sub("", raw)).rstrip()
        if current is not None and current.collecting():
            current.body.append(line)
            continue
        header = HEADER.match(line)
        if header:
            play, task = (header.group(2), "") if header.group(1) == "PLAY" else (play, header.group(2))
        elif FAILURE.match(line):
            current = Failure(line)
            failures.setdefault((play, task), []).append(current)
        elif line == "...ignoring" and current is not None:
            current.ignored = True
        elif VERDICT.search(line) and trim(line) not in verdicts:
            verdicts.append(trim(line))
    return failures, verdicts


def summary(failures: Dict[Tuple[str, str], List[Failure]], verdicts: List[str]) -> List[str]:
    out: List[str] = []
    for (play, task), found in failures.items():
        kept = [failure for failure in found if not failure.ignored]
        if kept:
            out.append(f"PLAY [{play}] TASK [{task}]")
        for failure in kept:
            out.append("  " + trim(failure.line.split(" => ", 1)[0]))
            msg = failure.msg()
            if msg is not None:
                out.append("    msg: " + trim(msg))
    return out + verdicts


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("log")
    parser.add_argument("--max-lines", type=int, default=40)
    args = parser.parse_args()
    try:
        with open(args.log, encoding="utf-8", errors="replace") as handle:
            lines = summary(*parse(handle.read().splitlines()))
    except OSError as err:
        print(f"molecule_failures: cannot read {args.log}: {err.strerror}", file=sys.stderr)
        return 2
    if len(lines) > args.max_lines:
        lines = lines[: args.max_lines - 1] + [f"... {len(lines) - args.max_lines + 1} more lines in the log"]
    print(f"== failed tasks (full output: {args.log})")
    print("\n".join(lines) if lines else "no failed task found in the log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
