#!/usr/bin/python
"""Module `fleet_files`: writes a role's directories and files in one round trip.

The roles call it with only what `fleet_probe` found out of date, so a rerun with nothing to do
does not call it at all, and a first run writes every file of a role in one call instead of a
stat, a transfer and a copy call per file. Each file is written to a temporary file in its
directory, already with its owner and mode, checked by its `validate` command if it has one, and
then renamed over the old one: a reader sees the old file or the new one, never a partial or
over-permissive one.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: fleet_files
short_description: Creates directories and writes files with owner, mode and an optional validate command
description:
  - Supports check mode (reports what it would change) and diff mode (text of changed files).
options:
  files:
    description: Directories and files, created in the order given.
    type: list
    elements: dict
    required: true
    options:
      path:
        type: path
        required: true
      state:
        type: str
        choices: [file, directory]
        default: file
      content:
        description: The file's whole content (state file).
        type: str
        default: ""
      mode:
        type: str
        required: true
      owner:
        type: str
        default: root
      group:
        type: str
        default: root
      validate:
        description: Command run on the new content before it replaces the file; %s is its path.
        type: str
"""

RETURN = r"""
changed_paths:
  description: The paths created, rewritten or given another mode, owner or group (all in check mode).
  type: list
"""


def ids(module: AnsibleModule, entry: Dict[str, Any]) -> Tuple[int, int]:
    try:
        return pwd.getpwnam(entry["owner"]).pw_uid, grp.getgrnam(entry["group"]).gr_gid
    except KeyError as err:
        module.fail_json(msg=f"{entry['path']}: no such owner or group: {err}")


def attributes_differ(info: os.stat_result, mode: int, uid: int, gid: int) -> bool:
    return stat.S_IMODE(info.st_mode) != mode or info.st_uid != uid or info.st_gid != gid


def repair_attributes(module: AnsibleModule, entry: Dict[str, Any], mode: int, info: os.stat_result) -> bool:
    """Gives an existing path its owner, group and mode; whether they differed (in check mode: would)."""
    uid, gid = ids(module, entry)
    if not attributes_differ(info, mode, uid, gid):
        return False
    if not module.check_mode:
        os.chown(entry["path"], uid, gid)
        os.chmod(entry["path"], mode)
    return True


def current_text(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def ensure_directory(module: AnsibleModule, entry: Dict[str, Any], mode: int) -> bool:
    path = entry["path"]
    try:
        info: Optional[os.stat_result] = os.stat(path)
    except FileNotFoundError:
        info = None
    if info is not None and not stat.S_ISDIR(info.st_mode):
        module.fail_json(msg=f"{path} exists and is not a directory")
    if info is not None:
        return repair_attributes(module, entry, mode, info)
    if not module.check_mode:
        uid, gid = ids(module, entry)
        os.makedirs(path, mode=0o700)  # the wanted mode follows, once owner and group are right
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    return True


def write_file(module: AnsibleModule, entry: Dict[str, Any], mode: int, diffs: List[Dict[str, str]]) -> bool:
    path, content = entry["path"], entry["content"].encode("utf-8")
    before = current_text(path)
    if before == content:
        return repair_attributes(module, entry, mode, os.stat(path))
    if module._diff:
        diffs.append({
            "before_header": path, "after_header": path,
            "before": (before or b"").decode("utf-8", "replace"), "after": entry["content"],
        })  # fmt: skip
    if module.check_mode:
        return True
    uid, gid = ids(module, entry)
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
    try:
        os.fchown(handle, uid, gid)
        os.fchmod(handle, mode)
        os.write(handle, content)
        os.fsync(handle)
        os.close(handle)
        handle = -1
        if entry.get("validate"):
            rc, out, err = module.run_command(entry["validate"] % temporary)
            if rc != 0:
                module.fail_json(msg=f"{path}: validation failed, file left as it was", rc=rc, stdout=out, stderr=err)
        os.replace(temporary, path)
        temporary = ""
    finally:
        if handle >= 0:
            os.close(handle)
        if temporary:
            os.unlink(temporary)
    if module.selinux_enabled():
        module.set_default_selinux_context(path, False)
    return True


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "files": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "options": {
                    "path": {"type": "path", "required": True},
                    "state": {"type": "str", "choices": ["file", "directory"], "default": "file"},
                    "content": {"type": "str", "default": ""},
                    "mode": {"type": "str", "required": True},
                    "owner": {"type": "str", "default": "root"},
                    "group": {"type": "str", "default": "root"},
                    "validate": {"type": "str"},
                },
            },
        },
        supports_check_mode=True,
    )
    changed_paths: List[str] = []
    diffs: List[Dict[str, str]] = []
    for entry in module.params["files"]:
        try:
            mode = int(entry["mode"], 8)
        except ValueError:
            module.fail_json(msg=f"{entry['path']}: mode must be octal like '0644', got {entry['mode']!r}")
        if entry.get("validate") and "%s" not in entry["validate"]:
            module.fail_json(msg=f"{entry['path']}: validate must contain %s (the new file's path)")
        try:
            if entry["state"] == "directory":
                changed = ensure_directory(module, entry, mode)
            else:
                changed = write_file(module, entry, mode, diffs)
        except OSError as err:
            module.fail_json(msg=f"{entry['path']}: {err.strerror or err}", changed_paths=changed_paths)
        if changed:
            changed_paths.append(entry["path"])
    module.exit_json(changed=bool(changed_paths), changed_paths=changed_paths, diff=diffs)


if __name__ == "__main__":
    main()
