#!/usr/bin/env python3
"""Prints a short summary of the failed Ansible tasks in a Molecule log: for each failure that was
not ignored, its play and task, the host line and the result's msg; then Molecule's own error lines.

Usage: molecule_failures.py LOG [--max-lines N]
Meant for the end of a failed run, where CI shows only the last lines of the output.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Iterator, List, Optional

ANSI = re.compile(r"\x1b\[[0-9;]*m")
HEADER = re.compile(r"^(PLAY|TASK) \[(.*)\] \*+$")
FAILURE = re.compile(r"^(fatal|failed): \[")
# Molecule's own verdicts: a failed step, the command that failed, idempotence offenders.
MOLECULE_ERROR = re.compile(r"(CRITICAL|ERROR)\s|Executed: Failed|Idempotence test failed|return code was")
LINE_CHARS = 300


class Failure:
    def __init__(self, play: str, task: str, line: str) -> None:
        self.play = play
        self.task = task
        self.line = line
        self.body: List[str] = []
        self.ignored = False

    def msg(self) -> Optional[str]:
        """The result's msg, from the one-line or the indented JSON after `=>`."""
        text = self.line.split(" => ", 1)[1] if " => " in self.line else ""
        text += "\n".join(self.body)
        try:
            result = json.loads(text)
        except ValueError:
            return None
        msg = result.get("msg") if isinstance(result, dict) else None
        return None if msg is None else str(msg)

    def lines(self) -> Iterator[str]:
        yield f"PLAY [{self.play}] TASK [{self.task}]"
        yield "  " + trim(self.line.split(" => ", 1)[0])
        msg = self.msg()
        if msg is not None:
            yield "  msg: " + trim(" ".join(msg.split()))


def trim(text: str) -> str:
    return text if len(text) <= LINE_CHARS else text[: LINE_CHARS - 3] + "..."


def parse(lines: List[str]) -> tuple[List[Failure], List[str]]:
    failures: List[Failure] = []
    molecule_errors: List[str] = []
    play = task = ""
    current: Optional[Failure] = None
    for raw in lines:
        line = ANSI.sub("", raw).rstrip()
        if current is not None and current.line.endswith("{") and not current.body[-1:] == ["}"]:
            current.body.append(line)
            continue
        header = HEADER.match(line)
        if header:
            play, task = (header.group(2), "") if header.group(1) == "PLAY" else (play, header.group(2))
            current = None
        elif FAILURE.match(line):
            current = Failure(play, task, line)
            failures.append(current)
        elif line == "...ignoring" and failures:
            failures[-1].ignored = True
        elif MOLECULE_ERROR.search(line) and not line.startswith("[ERROR]: Task failed"):
            molecule_errors.append(trim(line))
    return [failure for failure in failures if not failure.ignored], molecule_errors


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("log")
    parser.add_argument("--max-lines", type=int, default=40)
    args = parser.parse_args()
    try:
        with open(args.log, encoding="utf-8", errors="replace") as handle:
            failures, molecule_errors = parse(handle.read().splitlines())
    except OSError as err:
        print(f"molecule_failures: cannot read {args.log}: {err.strerror}", file=sys.stderr)
        return 2
    summary = [line for failure in failures for line in failure.lines()] + molecule_errors[-8:]
    if len(summary) > args.max_lines:
        summary = summary[: args.max_lines - 1] + [f"... {len(summary) - args.max_lines + 1} more lines"]
    print(f"== failed tasks (full output: {args.log})")
    print("\n".join(summary) if summary else "no failed task found in the log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
