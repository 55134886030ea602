"""docs/security.md records a hardening figure for every unit the Molecule scenarios rate.

The scenarios (molecule/shared/security.yml, imported with fleet_security_units) measure each unit
with `systemd-analyze security` and fail above 2.0; this keeps the document in step with them: a
unit the roles start installing and the scenarios start rating must get its figure written down.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security.md"
MAX_EXPOSURE = 2.0


def rated_units() -> Set[str]:
    units: Set[str] = set()
    for verify in ROOT.glob("molecule/*/verify.yml"):
        text = verify.read_text(encoding="utf-8")
        for block in re.findall(r"fleet_security_units:(.*?)(?:\n\S|\n\s*\n|\Z)", text, re.S):
            units.update(re.findall(r"[\w-]+\.service", block))
    return units


def documented_figures() -> Dict[str, List[float]]:
    """Rows of the figures table: | `unit` | OS | systemd | **1.2 OK** |"""
    figures: Dict[str, List[float]] = {}
    for unit, figure in re.findall(r"^\|\s*`([\w-]+\.service)`\s*\|.*?\*\*([0-9.]+) \w+\*\*", DOC.read_text(), re.M):
        figures.setdefault(unit, []).append(float(figure))
    return figures


def test_the_scenarios_rate_the_agent_and_the_server_units() -> None:
    assert {"push-monitor.service", "prometheus-pushgateway.service", "prometheus.service"} <= rated_units()


def test_every_rated_unit_has_its_figure_in_the_doc_within_the_limit() -> None:
    figures = documented_figures()
    missing = sorted(rated_units() - figures.keys())
    assert missing == [], f"docs/security.md has no figure for {missing}"
    too_high = {unit: values for unit, values in figures.items() if max(values) > MAX_EXPOSURE}
    assert too_high == {}
