"""Filters `push_monitor_stale` and `push_monitor_stale_reads`: which devices a Pushgateway does not
show a fresh push for.

verify-pushgateway.yml reads each gateway's groups once for all its devices and judges every device
here, instead of each device fetching every group of the fleet (O(devices²) bytes through the
controller). Freshness is judged on the gateway's clock: push_time_seconds against the Date header of
the same answer. A device whose agent this run restarted must also show a start time
(push_monitor_start_time_seconds, the device's clock) no older than the probe, taken on that device
before the restart, or the old process's last push would count.
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from typing import Any, Dict, Iterable, Mapping, Tuple


def _value(group: Mapping[str, Any], name: str) -> float:
    try:
        return float(group[name]["metrics"][0]["value"])
    except (KeyError, IndexError, TypeError, ValueError):
        return 0.0


def push_monitor_stale(
    read: Mapping[str, Any], targets: Iterable[Mapping[str, Any]], restarted: Iterable[str] = ()
) -> Dict[str, str]:
    """{inventory host: why it is not fresh} for the targets ({host, job, serial, max_age, since})
    judged against one uri result of GET /api/v1/metrics; `since` counts for the restarted hosts only."""
    targets, restarted = list(targets), set(restarted)
    answer = read.get("json")
    data = answer.get("data") if isinstance(answer, Mapping) else None
    if read.get("status") != 200 or not isinstance(data, list) or not read.get("date"):
        why = f"the Pushgateway did not answer: {read.get('msg') or read.get('status') or 'no answer'}"
        return {target["host"]: why for target in targets}
    now = parsedate_to_datetime(read["date"]).timestamp()
    groups: Dict[Tuple[str, str], Mapping[str, Any]] = {}
    for group in data:
        labels = group.get("labels") or {}
        if "device_serial" in labels:
            groups[(labels.get("job", ""), labels["device_serial"])] = group
    stale = {}
    for target in targets:
        group = groups.get((target["job"], target["serial"]))
        if group is None:
            stale[target["host"]] = "no push of this serial and job at the Pushgateway"
            continue
        age = now - _value(group, "push_time_seconds")
        if age > float(target["max_age"]):
            stale[target["host"]] = f"the last push is {age:.0f} s old (at most {float(target['max_age']):g} s)"
        elif target["host"] in restarted and _value(group, "push_monitor_start_time_seconds") < float(target["since"]):
            stale[target["host"]] = "the pushes come from the agent that ran before the restart"
    return stale


def push_monitor_stale_reads(
    reads: Iterable[Mapping[str, Any]], targets: Iterable[Mapping[str, Any]], restarted: Iterable[str] = ()
) -> Dict[str, str]:
    """push_monitor_stale over the results of a loop of reads, one per gateway URL (`item.url`)."""
    targets, restarted = list(targets), list(restarted)
    stale: Dict[str, str] = {}
    for read in reads:
        url = (read.get("item") or {}).get("url")
        stale.update(push_monitor_stale(read, [target for target in targets if target["url"] == url], restarted))
    return stale


class FilterModule:
    def filters(self):
        return {"push_monitor_stale": push_monitor_stale, "push_monitor_stale_reads": push_monitor_stale_reads}
