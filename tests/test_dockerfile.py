"""The agent's Dockerfile cannot be built here (no Docker engine): check what can go wrong on paper."""

from __future__ import annotations

import re

from conftest import ROOT

DOCKERFILE = ROOT / "files" / "Dockerfile"


def instructions() -> list:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.split(None, 1) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_base_is_a_pinned_slim_python() -> None:
    base = next(args for op, args in instructions() if op == "FROM")
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base.strip()), base


def test_copied_files_exist_in_the_build_context() -> None:
    for op, args in instructions():
        if op == "COPY":
            source = args.split()[0]
            assert (DOCKERFILE.parent / source).is_file(), source


def test_runs_unprivileged_and_starts_the_agent() -> None:
    ops = instructions()
    users = [args.strip() for op, args in ops if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    entrypoint = next(args for op, args in ops if op == "ENTRYPOINT")
    assert "/opt/push-monitor/push_monitor.py" in entrypoint
