#!/usr/bin/env bash
# The local lab: a monitoring server container (Pushgateway, Prometheus, and Grafana where its
# package source is reachable) and three device containers (critical, regular, dev) on a podman
# network of their own, reached over SSH and rolled out with `ansible-playbook -i inventory/lab site.yml`.
#   scripts/lab.sh up     create or reuse the containers, run site.yml, print the device table
#   scripts/lab.sh down   remove the containers, the network and their cached facts
# Safe to rerun: existing containers are reused and the playbook is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

NETWORK=fleet-lab
GATEWAY=fleet-lab-gateway
# container name -> image (one device on Debian 13, so both releases are in use)
declare -A IMAGES=(
  [$GATEWAY]=server-debian12
  [fleet-lab-critical]=device-debian12
  [fleet-lab-regular]=device-debian13
  [fleet-lab-dev]=device-debian12
)
CONTAINERS=("$GATEWAY" fleet-lab-critical fleet-lab-regular fleet-lab-dev)
BIN=${BIN:-$PWD/.venv/bin}
# The fleet_pki role's controller directory: the lab's CA and generated passwords.
PKI=$PWD/.cache/pki
# The lab's SSH key, known_hosts and ssh_config (scripts/container-ssh.sh; inventory/lab uses them).
SSH_DIR=$PWD/.cache/lab

log() { echo "lab: $*"; }

start_container() {
  local name=$1 image="localhost/fleet-${IMAGES[$1]}:latest"
  # A container of an image that was rebuilt since (a changed recipe) lacks what the recipe added.
  if podman container exists "$name" &&
    [[ $(podman inspect --format '{{.Image}}' "$name") != $(podman image inspect --format '{{.Id}}' "$image") ]]; then
    log "recreating $name: $image was rebuilt since it was started"
    podman rm --force --time 5 "$name" >/dev/null
    rm -f ".cache/facts/$name"
  fi
  if ! podman container exists "$name"; then
    log "starting $name ($image)"
    podman run --detach --quiet --name "$name" --hostname "$name" --network "$NETWORK" \
      --systemd=always --label fleet-lab=1 "$image" >/dev/null
  elif [[ $(podman inspect --format '{{.State.Running}}' "$name") != true ]]; then
    log "restarting $name"
    podman start "$name" >/dev/null
  fi
}

# Bounded: 60 tries, half a second apart.
wait_for_systemd() {
  local name=$1 state=""
  for _ in $(seq 60); do
    state=$(podman exec "$name" systemctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && return 0
    sleep 0.5
  done
  echo "lab: systemd in $name did not finish booting (state: ${state:-unknown})" >&2
  return 1
}

# The server container's address on the lab network, as this machine reaches it.
server_ip() {
  podman inspect --format "{{ (index .NetworkSettings.Networks \"$NETWORK\").IPAddress }}" "$GATEWAY"
}

# URL of a port on the server container: Pushgateway 9091 and Prometheus 9090 serve TLS (the lab's
# internal CA in .cache/pki), Grafana 3000 plain HTTP.
server_url() {
  local scheme=https
  [[ $1 == 3000 ]] && scheme=http
  echo "$scheme://$(server_ip):$1"
}

# Stops in seconds, naming what is missing, instead of failing minutes later in the rollout.
check_host() {
  local report
  if ! report=$(scripts/setup-host.sh --check); then
    grep MISSING <<<"$report" | sed 's/^ *MISSING */lab: host is missing /' >&2
    echo "lab: run scripts/setup-host.sh (make lab does) to install and configure it" >&2
    exit 1
  fi
}

up() {
  check_host
  log "container images (built once from the Debian archive, a few minutes each; cached afterwards)"
  scripts/images.sh "${IMAGES[@]}"
  podman network exists "$NETWORK" || podman network create "$NETWORK" >/dev/null
  for name in "${CONTAINERS[@]}"; do start_container "$name"; done
  for name in "${CONTAINERS[@]}"; do wait_for_systemd "$name"; done
  scripts/check-network.sh "$NETWORK" "${CONTAINERS[@]}" | sed 's/^/lab: /'
  scripts/container-ssh.sh "$SSH_DIR" "$NETWORK" "${CONTAINERS[@]}"
  log "SSH: ssh -F $SSH_DIR/ssh_config ${CONTAINERS[1]}"
  # Grafana is installed from its official repository; where that is unreachable (as on the
  # project's CI machines) the lab goes on without the Grafana package, its files still rendered.
  local skip=()
  if ! curl --silent --head --fail --max-time 5 https://apt.grafana.com/gpg.key >/dev/null; then
    log "Grafana's package repository (apt.grafana.com) is unreachable: going on without Grafana"
    skip=(--skip-tags grafana_install)
  fi
  # The server certificate also names the container's address, which this machine uses (the
  # devices use its name).
  local names
  names=$(printf '{"fleet_pki_server_names": ["%s"]}' "$(server_ip)")
  log "rolling out: ansible-playbook -i inventory/lab site.yml (the first run installs packages in every container: a few minutes)"
  "$BIN/ansible-playbook" -i inventory/lab "${skip[@]}" -e "$names" site.yml
  # The device table as Prometheus sees it: scraped from the gateway, ages from the recording rule.
  "$BIN/python" scripts/lab_table.py --inventory inventory/lab --prometheus "$(server_url 9090)" --wait 30 \
    --ca-file "$PKI/ca.crt" --username fleet-read --password-file "$PKI/read-password"
  log "Prometheus:  $(server_url 9090)   (alerts: $(server_url 9090)/alerts)"
  log "Pushgateway: $(server_url 9091)"
  log "TLS and logins: CA $PKI/ca.crt; user fleet-read, password in $PKI/read-password"
  log "  e.g. curl --cacert $PKI/ca.crt -u fleet-read:\$(cat $PKI/read-password) $(server_url 9090)/api/v1/targets"
  if podman exec "$GATEWAY" systemctl is-active --quiet grafana-server 2>/dev/null; then
    log "Grafana:     $(server_url 3000)   (admin / admin, lab only)"
  else
    log "Grafana:     not installed (its package source is unreachable); dashboards: roles/grafana/files/dashboards/"
  fi
  log "remove the lab with: make lab-down"
}

down() {
  for name in "${CONTAINERS[@]}"; do
    if podman container exists "$name"; then
      log "removing $name"
      podman rm --force --time 5 "$name" >/dev/null
    fi
    rm -f ".cache/facts/$name"
  done
  if podman network exists "$NETWORK"; then
    podman network rm "$NETWORK" >/dev/null
  fi
  rm -f "$SSH_DIR/known_hosts" "$SSH_DIR/ssh_config"
  log "removed"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *)
    echo "usage: $0 up|down" >&2
    exit 2
    ;;
esac
