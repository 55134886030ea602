"""Filters comparing what a role would write with what the fleet_probe module found on the host.

`fleet_file_state`: the entry fleet_probe reports for a file holding `content` with that mode, owner
and group (the content's SHA-1, as the controller would write it).
`fleet_wanted`: {path: state} for a list of fleet_files entries, as the probe reports them once written.
`fleet_outdated`: the paths whose probed state differs from the wanted one. `wanted` maps each
managed path to the state the role leaves it in ({type, mode, owner, group} and, for a file, sha1;
{type: absent} for a path the role removes); `installed` is the module's `paths` result, which lists
only paths that exist. Only the keys a wanted entry names are compared.
`fleet_apt_install`: the shell command that installs Debian packages with apt-get from the host's own
package lists and refreshes them only when that fails (no lists yet, or so old that the archive no
longer has their version): a refresh downloads and parses tens of MB per host, a fleet-wide cost on
metered links, for what is usually one small package. apt-get rather than the apt module: that module
first installs python3-apt (and three more packages) on every host that lacks it, and its check mode
fails without it. Run it with DEBIAN_FRONTEND=noninteractive.
`fleet_stage_selected`: whether this run's --tags / --skip-tags select a role's stage, whose tasks are
tagged `<stage>`, `<role>_<stage>` and `<role>` (ansible_run_tags and ansible_skip_tags in).
"""

from __future__ import annotations

import hashlib
import shlex
from typing import Any, Dict, Iterable, List, Mapping

ABSENT = {"type": "absent"}


def fleet_file_state(content: str, mode: str, owner: str = "root", group: str = "root") -> Dict[str, str]:
    sha1 = hashlib.sha1(str(content).encode("utf-8")).hexdigest()
    return {"type": "file", "mode": mode, "owner": owner, "group": group, "sha1": sha1}


def fleet_wanted(entries: Iterable[Mapping[str, Any]]) -> Dict[str, Dict[str, str]]:
    wanted = {}
    for entry in entries:
        owner, group = entry.get("owner", "root"), entry.get("group", "root")
        if entry.get("state", "file") == "directory":
            wanted[entry["path"]] = {"type": "directory", "mode": entry["mode"], "owner": owner, "group": group}
        else:
            wanted[entry["path"]] = fleet_file_state(entry.get("content", ""), entry["mode"], owner, group)
    return wanted


def fleet_outdated(wanted: Mapping[str, Mapping[str, Any]], installed: Mapping[str, Dict[str, Any]]) -> List[str]:
    outdated = []
    for path, state in wanted.items():
        found = installed.get(path, ABSENT)
        if any(found.get(key) != value for key, value in state.items()):
            outdated.append(path)
    return outdated


def fleet_apt_install(packages: Iterable[str], recommends: bool = False) -> str:
    apt = "apt-get --quiet --yes -o DPkg::Lock::Timeout=120" + ("" if recommends else " --no-install-recommends")
    install = f"{apt} install {' '.join(shlex.quote(str(name)) for name in packages)}"
    return f"{install} || {{ {apt} update && {install}; }}"


def fleet_stage_selected(stage: str, role: str, run_tags: Iterable[str], skip_tags: Iterable[str]) -> bool:
    tags = {stage, f"{role}_{stage}", role}
    run, skip = set(run_tags), set(skip_tags)
    return bool(run & ({"all", "tagged"} | tags)) and not skip & ({"tagged"} | tags)


class FilterModule:
    def filters(self):
        return {
            "fleet_file_state": fleet_file_state,
            "fleet_wanted": fleet_wanted,
            "fleet_outdated": fleet_outdated,
            "fleet_stage_selected": fleet_stage_selected,
            "fleet_apt_install": fleet_apt_install,
        }
