#!/usr/bin/python
"""Module `fleet_probe`: the state of a host's managed files, packages, units and accounts in one round trip.

The roles compare what it reports with what they would write (the `fleet_outdated` filter) and run
their file, package and service tasks only where the two differ, instead of one module call per
file on every run. It only reads, so it runs the same in check mode.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: fleet_probe
short_description: Reads mode, owner, group and SHA-1 of paths, missing Debian packages and unit states
description:
  - Only reads; supports check mode.
options:
  paths:
    description: Paths whose state is reported (those that exist).
    type: list
    elements: path
    default: []
  packages:
    description: Debian packages to look up with dpkg-query (none count as installed without it).
    type: list
    elements: str
    default: []
  units:
    description: systemd units whose load, active and unit-file state is reported.
    type: list
    elements: str
    default: []
  users:
    description: Accounts whose passwd entry is reported (those that exist).
    type: list
    elements: str
    default: []
  groups:
    description: Groups whose entry is reported (those that exist).
    type: list
    elements: str
    default: []
  command:
    description: >-
      A read-only command, as argv with optional stdin (a role's own lookup, e.g. the agent
      resolving its device serial); it runs in check mode too, and the probe fails when it exits
      non-zero.
    type: dict
    options:
      argv:
        type: list
        elements: str
        required: true
      stdin:
        type: str
"""

RETURN = r"""
paths:
  description: >-
    {path: {type (file, directory or other), mode (0644), owner, group, sha1 (files)}} for each
    existing path.
  type: dict
installed_packages:
  description: The given packages dpkg lists as installed, in the given order.
  type: list
units:
  description: "{unit: {load, active, enabled}} (systemd's LoadState, ActiveState and UnitFileState)."
  type: dict
units_up:
  description: The given units that are active and enabled, in the given order (the roles start and enable the others).
  type: list
users:
  description: >-
    {name: {uid, group (the primary group's name), home, shell, locked}} for each existing
    account; locked (password locked) only when /etc/shadow is readable.
  type: dict
groups:
  description: "{name: {gid}} for each existing group."
  type: dict
command:
  description: "{stdout, stderr} of the command; absent without one."
  type: dict
clock:
  description: The host's Unix time when the probe ran, before any change this run makes.
  type: float
platform:
  description: >-
    {os_family (Debian, RedHat, else the os-release ID), service_mgr (systemd or other),
    python {major, minor} (the interpreter running the probe), architecture (uname -m)}.
  type: dict
"""


def account_name(lookup: Callable, number: int) -> str:
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def describe(path: str) -> Dict[str, str]:
    info = os.stat(path)
    kind = "directory" if stat.S_ISDIR(info.st_mode) else "file" if stat.S_ISREG(info.st_mode) else "other"
    entry = {
        "type": kind,
        "mode": f"{stat.S_IMODE(info.st_mode):04o}",
        "owner": account_name(pwd.getpwuid, info.st_uid),
        "group": account_name(grp.getgrgid, info.st_gid),
    }
    if kind == "file":
        digest = hashlib.sha1()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        entry["sha1"] = digest.hexdigest()
    return entry


def installed_packages(module: AnsibleModule, packages: List[str]) -> List[str]:
    dpkg_query = module.get_bin_path("dpkg-query") if packages else None
    if not dpkg_query:  # not a Debian-family host: no package counts as installed by dpkg
        return []
    # Exit status 1 only says that some package is unknown to dpkg: that one is not installed.
    _, out, _ = module.run_command([dpkg_query, "--show", "--showformat=${Package} ${db:Status-Status}\n", *packages])
    installed = {line.split(" ", 1)[0] for line in out.splitlines() if line.endswith(" installed")}
    return [package for package in packages if package in installed]


def unit_states(module: AnsibleModule, units: List[str]) -> Dict[str, Dict[str, str]]:
    if not units:
        return {}
    systemctl = module.get_bin_path("systemctl", required=True)
    properties = "LoadState,ActiveState,UnitFileState"
    rc, out, err = module.run_command([systemctl, "show", "--property=" + properties, "--", *units])
    if rc != 0:
        module.fail_json(msg="systemctl show failed: " + err.strip())
    # One block of NAME=value lines per unit, in the order given, separated by empty lines.
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line) for block in out.split("\n\n")]
    blocks = [block for block in blocks if block]
    if len(blocks) != len(units):
        module.fail_json(msg=f"systemctl show answered {len(blocks)} blocks for {len(units)} units")
    return {
        unit: {
            "load": block.get("LoadState", ""),
            "active": block.get("ActiveState", ""),
            "enabled": block.get("UnitFileState", ""),
        }
        for unit, block in zip(units, blocks)
    }


def os_family() -> str:
    """Debian or RedHat for their derivatives (as Ansible's os_family), else the os-release ID."""
    try:
        with open("/etc/os-release", encoding="utf-8") as handle:
            fields = dict(line.rstrip("\n").split("=", 1) for line in handle if "=" in line)
    except OSError:
        return "unknown"
    names = " ".join(fields.get(key, "").strip("\"'") for key in ("ID", "ID_LIKE")).lower().split()
    if {"debian", "ubuntu"} & set(names):
        return "Debian"
    if {"rhel", "fedora", "centos"} & set(names):
        return "RedHat"
    return names[0] if names else "unknown"


def platform_facts() -> Dict[str, Any]:
    """What the roles would otherwise gather with the setup module, a round trip of its own."""
    return {
        "os_family": os_family(),
        # systemd's own test for "booted with systemd" (sd_booted).
        "service_mgr": "systemd" if os.path.isdir("/run/systemd/system") else "other",
        "python": {"major": sys.version_info[0], "minor": sys.version_info[1]},
        "architecture": os.uname().machine,
    }


def locked_accounts() -> Dict[str, bool]:
    """Whether each account's password is locked; empty when /etc/shadow is not readable (not root)."""
    try:
        with open("/etc/shadow", encoding="utf-8") as handle:
            fields = [line.split(":", 2) for line in handle if line.count(":") >= 2]
    except OSError:
        return {}
    return {name: password.startswith(("!", "*")) for name, password, _ in fields}


def user_entries(names: List[str]) -> Dict[str, Dict[str, Any]]:
    entries = {}
    locked = locked_accounts() if names else {}
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        entries[name] = {
            "uid": entry.pw_uid,
            "group": account_name(grp.getgrgid, entry.pw_gid),
            "home": entry.pw_dir,
            "shell": entry.pw_shell,
        }
        if name in locked:
            entries[name]["locked"] = locked[name]
    return entries


def group_entries(names: List[str]) -> Dict[str, Dict[str, int]]:
    entries = {}
    for name in names:
        try:
            entries[name] = {"gid": grp.getgrnam(name).gr_gid}
        except KeyError:
            continue
    return entries


def run_command(module: AnsibleModule, command: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if not command:
        return None
    rc, out, err = module.run_command(command["argv"], data=command.get("stdin"), binary_data=True)
    if rc != 0:
        module.fail_json(msg=f"{command['argv'][0]} exited {rc}: {err.strip()[-2000:]}", rc=rc, stdout=out, stderr=err)
    return {"stdout": out, "stderr": err}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "paths": {"type": "list", "elements": "path", "default": []},
            "packages": {"type": "list", "elements": "str", "default": []},
            "units": {"type": "list", "elements": "str", "default": []},
            "users": {"type": "list", "elements": "str", "default": []},
            "groups": {"type": "list", "elements": "str", "default": []},
            "command": {
                "type": "dict",
                "options": {
                    "argv": {"type": "list", "elements": "str", "required": True},
                    "stdin": {"type": "str"},
                },
            },
        },
        supports_check_mode=True,
    )
    params = module.params
    clock = time.time()
    units = unit_states(module, params["units"])
    result = run_command(module, params["command"])
    module.exit_json(
        changed=False,
        clock=clock,
        platform=platform_facts(),
        users=user_entries(params["users"]),
        groups=group_entries(params["groups"]),
        **({"command": result} if result is not None else {}),
        paths={path: describe(path) for path in params["paths"] if os.path.exists(path)},
        installed_packages=installed_packages(module, params["packages"]),
        units=units,
        units_up=[
            name for name, state in units.items() if state["active"] == "active" and state["enabled"] == "enabled"
        ],
    )


if __name__ == "__main__":
    main()
