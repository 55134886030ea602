"""Helpers shared by the tests (tests/), the benchmarks (bench/) and the lab tools (scripts/), all run
on the controller: processes and ports (process), HTTP with an optional login and CA (web), a
throwaway PKI (pki), ansible-playbook runs (playbook), the roles' server config rendered and real
Prometheus, Pushgateway and Alertmanager processes (server), Grafana's query substitution
(dashboard_queries), and the benchmarks' checks, machine line and exit (bench).

The agent (files/push_monitor.py) and the janitor (files/pushgateway_janitor.py) do not import this:
each is installed as one standalone file and builds its own requests.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
