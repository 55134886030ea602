"""Every role's meta/argument_specs.yml matches its defaults/main.yml, and its README points there
instead of repeating the variables: a variable is declared in two places, which cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ROLES = sorted(path.parent.parent for path in ROOT.glob("roles/*/defaults/main.yml"))

# Python types a default may have for each argument_specs type ("raw" accepts anything).
SPEC_TYPES: Dict[str, tuple] = {
    "str": (str,),
    "path": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def spec_options(role: Path) -> Dict[str, Dict[str, Any]]:
    spec_file = role / "meta" / "argument_specs.yml"
    assert spec_file.is_file(), f"{role.name}: meta/argument_specs.yml is missing"
    return load_yaml(spec_file)["argument_specs"]["main"]["options"]


def role_defaults(role: Path) -> Dict[str, Any]:
    return load_yaml(role / "defaults" / "main.yml") or {}


def test_roles_are_found() -> None:
    assert "push_monitor" in [role.name for role in ROLES]


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_spec_options_equal_defaults(role: Path) -> None:
    options = spec_options(role)
    defaults = role_defaults(role)
    # A required option has no default on purpose; every other option is in defaults/main.yml.
    optional = {name for name, option in options.items() if not option.get("required", False)}
    assert sorted(optional - defaults.keys()) == [], "in argument_specs but not in defaults"
    assert sorted(defaults.keys() - optional) == [], "in defaults but not optional in argument_specs"


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_spec_defaults_equal_default_values(role: Path) -> None:
    options = spec_options(role)
    mismatched = {
        name: (options[name].get("default"), value)
        for name, value in role_defaults(role).items()
        if name in options and options[name].get("default") != value
    }
    assert mismatched == {}, "argument_specs default != defaults/main.yml value"


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_defaults_have_the_declared_type_and_choice(role: Path) -> None:
    problems: List[str] = []
    for name, option in spec_options(role).items():
        if "default" not in option or option["default"] is None:
            continue
        default, declared = option["default"], option.get("type", "str")
        templated = isinstance(default, str) and "{{" in default
        allowed = SPEC_TYPES.get(declared)
        # bool is an int in Python, but a bool default for an int option is a mistake.
        wrong_bool = isinstance(default, bool) and declared in ("int", "float")
        if allowed and not templated and (not isinstance(default, allowed) or wrong_bool):
            problems.append(f"{name}: type {declared}, default {default!r}")
        if "choices" in option and not templated and default not in option["choices"]:
            problems.append(f"{name}: default {default!r} not in choices {option['choices']}")
        if not option.get("description"):
            problems.append(f"{name}: no description")
    assert problems == []


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_readme_links_the_specs_instead_of_a_variable_table(role: Path) -> None:
    readme = role / "README.md"
    assert readme.is_file(), f"{role.name}: README.md is missing"
    text = readme.read_text(encoding="utf-8")
    assert "(meta/argument_specs.yml)" in text, "the README must link meta/argument_specs.yml"
    table_rows = [line for line in text.splitlines() if re.match(rf"\|\s*`{role.name}_\w+`", line)]
    assert table_rows == [], "variables are documented in meta/argument_specs.yml, not in a README table"


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_public_variables_carry_the_role_prefix(role: Path) -> None:
    prefix = role.name + "_"
    assert [name for name in role_defaults(role) if not name.startswith(prefix)] == []
