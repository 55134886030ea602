#!/usr/bin/env bash
# Runs `molecule test -s SCENARIO` under the scenario's lock (one run of a scenario at a time on this
# host), keeping its full output in /var/tmp/fleet-molecule-SCENARIO.log. On failure the output ends
# with a summary of the failed tasks, and the exit code is Molecule's.
set -uo pipefail
scenario=$1
log=/var/tmp/fleet-molecule-$scenario.log
exec 9>"/var/tmp/fleet-molecule-$scenario.lock"
flock 9
# Molecule wraps long lines at the terminal's width (80 columns without a terminal), which would cut
# the results apart in the log; Ansible's own output does not read COLUMNS.
COLUMNS=100000 molecule test -s "$scenario" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
  echo "== molecule test -s $scenario failed (exit $status)"
  python3 "$(dirname "$0")/molecule_failures.py" "$log"
fi
exit "$status"
