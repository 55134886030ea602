"""The roles' bcrypt filter: hashes the exporter toolkit accepts, the same on every rerun (so the web
config stays unchanged and the play idempotent), different per host and user."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import bcrypt
import pytest
from ansible.errors import AnsibleFilterError
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "roles" / "server_common" / "filter_plugins" / "fleet_bcrypt.py"


def load_filter():
    spec = importlib.util.spec_from_file_location("fleet_bcrypt", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILTER = load_filter()


@settings(max_examples=25, deadline=None)
@given(password=st.text(min_size=1).filter(lambda text: len(text.encode()) <= 72), seed=st.text())
def test_hash_verifies_and_is_stable(password: str, seed: str) -> None:
    hashed = FILTER.fleet_bcrypt(password, seed, 4)
    assert bcrypt.checkpw(password.encode(), hashed.encode())
    assert FILTER.fleet_bcrypt(password, seed, 4) == hashed


def test_salt_differs_per_seed_and_rounds_are_kept() -> None:
    first = FILTER.fleet_bcrypt("same-password", "server-a:fleet-push")
    second = FILTER.fleet_bcrypt("same-password", "server-b:fleet-push")
    assert first != second and first.startswith("$2b$10$") and second.startswith("$2b$10$")


@pytest.mark.parametrize(("password", "rounds"), [("", 10), ("x" * 73, 10), ("fine", 3), (None, 10)])
def test_bad_input_is_one_clear_error(password, rounds: int) -> None:
    with pytest.raises(AnsibleFilterError, match="fleet_bcrypt"):
        FILTER.fleet_bcrypt(password, "seed", rounds)
