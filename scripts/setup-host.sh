#!/usr/bin/env bash
# Installs and configures everything the lab, the tests and the benchmarks need on a Debian 12 host,
# as root, then checks each capability the project relies on.
#   scripts/setup-host.sh           install what is missing, repair what an earlier run left wrong, check
#   scripts/setup-host.sh --check   only report each capability as present / missing (exit 1 if any is missing)
#   scripts/setup-host.sh --print-packages | --print-containers-conf   what it installs / writes
# Idempotent: a second run installs nothing and changes no file.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  # containers for Molecule and the lab: podman with runc (crun fails on hybrid cgroups here),
  # netavark + aardvark-dns so every project network, --internal ones included, resolves container
  # names (the CNI backend podman falls back to without them never does on --internal networks),
  # iptables for netavark's NAT rules, mmdebstrap to build the images
  podman runc netavark aardvark-dns iptables uidmap mmdebstrap
  # the real server components the tests start themselves
  prometheus prometheus-pushgateway prometheus-alertmanager prometheus-node-exporter victoria-metrics
  # venv for the controller tools; the agent's distro dependencies for the compatibility test
  python3-venv python3-psutil python3-snappy python3-protobuf
  # SSH to the lab's and the scenarios' containers, as a real fleet is reached; git for pull mode
  curl ca-certificates make git openssh-client
)
CONF_FILE=/etc/containers/containers.conf
MARKER='fleet-monitor scripts/setup-host.sh'
# The runtime and network settings podman must run with here (see the package list above).
WANTED_CONF=$(
  cat <<CONF
# Written by $MARKER
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"

[network]
network_backend = "netavark"
CONF
)

log() { echo "setup-host: $*"; }

missing_packages() {
  local pkg
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
  done
}

install_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  ((${#missing[@]})) || return 0
  log "installing Debian packages (a minute or two on a fresh host): ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends keeps the host lean, so every package the project relies on is named
  # above; policy-rc.d stops the packaged services from starting on hosts that run systemd: the
  # tests start their own instances on free ports.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
  trap - EXIT
}

# Names of everything podman holds that is not the project's own (fleet-* containers and
# networks, localhost/fleet-* images); empty when a reset would only remove the project's state.
foreign_podman_state() {
  podman ps --all --format '{{.Names}}' | grep -v '^fleet-' | sed 's/^/container /' || true
  podman images --format '{{.Repository}}' | grep -v '^localhost/fleet-' | sed 's/^/image /' || true
  podman network ls --format '{{.Name}}' | grep -v -e '^fleet-' -e '^podman$' | sed 's/^/network /' || true
}

podman_has_state() {
  [[ -n $(podman ps --all --quiet) || -n $(podman images --quiet) ]] ||
    [[ -n $(podman network ls --format '{{.Name}}' | grep -v '^podman$') ]]
}

# Switching podman's network backend leaves the old backend's networks and containers unusable, so
# a host still on CNI is reset first, and only when all it holds is the project's own.
switch_to_netavark() {
  local backend foreign
  backend=$(podman info --format '{{.Host.NetworkBackend}}' 2>/dev/null || echo unknown)
  if [[ $backend != netavark ]] && podman_has_state; then
    foreign=$(foreign_podman_state)
    if [[ -n $foreign ]]; then
      log "podman uses the $backend network backend, which cannot resolve names on --internal networks;"
      log "switching to netavark needs 'podman system reset', which would also remove:"
      sed 's/^/  /' <<<"$foreign"
      log "back them up, run 'podman system reset --force', then run this script again"
      exit 1
    fi
    log "podman uses the $backend network backend: 'podman system reset' (removes only the project's images and containers; they are rebuilt)"
    podman system reset --force >/dev/null 2>&1
    rm -f /etc/cni/net.d/fleet-*.conflist
  fi
}

write_containers_conf() {
  [[ -f $CONF_FILE ]] && [[ $(<"$CONF_FILE") == "$WANTED_CONF" ]] && return 0
  install -d /etc/containers
  if [[ -f $CONF_FILE ]] && ! grep -q "$MARKER" "$CONF_FILE"; then
    cp -n "$CONF_FILE" "$CONF_FILE.orig"
    log "kept the previous $CONF_FILE as $CONF_FILE.orig"
  fi
  printf '%s\n' "$WANTED_CONF" >"$CONF_FILE"
  log "wrote $CONF_FILE (runc, ulimits, netavark)"
}

# A project network created before DNS worked is removed with its containers; the lab and the
# Molecule scenarios create it again, this time with DNS.
remove_networks_without_dns() {
  local network
  for network in $(podman network ls --format '{{.Name}}' | grep '^fleet-' || true); do
    [[ $(podman network inspect --format '{{.DNSEnabled}}' "$network") == true ]] && continue
    log "network $network has no DNS: removing it and its containers (recreated by the lab / Molecule)"
    podman network rm --force "$network" >/dev/null
  done
}

# One line per capability; returns non-zero if any is missing.
check() {
  local failed=0 missing probe backend runtime dns
  report() { # report NAME OK DETAIL
    if [[ $2 == yes ]]; then echo "  present  $1${3:+ ($3)}"; else
      echo "  MISSING  $1${3:+: $3}"
      failed=1
    fi
  }
  echo "setup-host: host capabilities"
  mapfile -t missing < <(missing_packages)
  report "Debian packages" "$( ((${#missing[@]})) && echo no || echo yes)" "${missing[*]:+not installed: ${missing[*]}}"
  if ! command -v podman >/dev/null; then
    report podman no "not installed"
    return 1
  fi
  backend=$(podman info --format '{{.Host.NetworkBackend}}' 2>/dev/null || echo unknown)
  report "podman network backend netavark" "$([[ $backend == netavark ]] && echo yes || echo no)" \
    "$([[ $backend == netavark ]] || echo "podman uses '$backend'; run scripts/setup-host.sh")"
  runtime=$(podman info --format '{{.Host.OCIRuntime.Name}}' 2>/dev/null || echo unknown)
  report "podman runtime runc" "$([[ $runtime == runc ]] && echo yes || echo no)" \
    "$([[ $runtime == runc ]] || echo "podman uses '$runtime'; run scripts/setup-host.sh")"
  report "container ulimits nofile/nproc" \
    "$(grep -qs 'nofile=20000:20000' "$CONF_FILE" && echo yes || echo no)" \
    "$(grep -qs 'nofile=20000:20000' "$CONF_FILE" || echo "not set in $CONF_FILE")"
  report "image build (mmdebstrap)" "$(command -v mmdebstrap >/dev/null && echo yes || echo no)"
  # A throwaway --internal network: the hardest case for name resolution.
  probe=fleet-probe-$$
  if podman network create --internal "$probe" >/dev/null 2>&1; then
    dns=$(podman network inspect --format '{{.DNSEnabled}}' "$probe" 2>/dev/null || echo false)
    podman network rm "$probe" >/dev/null 2>&1 || true
    report "name resolution on --internal networks" "$([[ $dns == true ]] && echo yes || echo no)" \
      "$([[ $dns == true ]] || echo "a new --internal network has no DNS (install netavark + aardvark-dns; run scripts/setup-host.sh)")"
  else
    report "podman network create" no "podman could not create a network"
  fi
  return "$failed"
}

case ${1:-} in
  --check)
    check
    ;;
  --print-packages)
    printf '%s\n' "${DEBIAN_PACKAGES[@]}"
    ;;
  --print-containers-conf)
    printf '%s\n' "$WANTED_CONF"
    ;;
  "")
    install_packages
    switch_to_netavark
    write_containers_conf
    remove_networks_without_dns
    check
    ;;
  *)
    echo "usage: $0 [--check | --print-packages | --print-containers-conf]" >&2
    exit 2
    ;;
esac
