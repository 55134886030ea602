#!/usr/bin/env bash
# Installs everything the lab, the tests and the benchmarks need on a Debian 12 host, as root.
# Idempotent: a second run installs nothing and changes no file.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  # containers for Molecule and the lab (crun fails on hybrid cgroups here; runc works)
  podman runc mmdebstrap uidmap slirp4netns containernetworking-plugins
  # the real server components the tests start themselves
  prometheus prometheus-pushgateway prometheus-node-exporter
  # venv for the controller tools; the agent's distro dependencies for the compatibility test
  python3-venv python3-psutil python3-prometheus-client
  curl ca-certificates make
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup-host: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends keeps the host lean; policy-rc.d stops the packaged services from
  # starting on hosts that run systemd: the tests start their own instances on free ports.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# podman on these hosts: runc (crun cannot use hybrid cgroups) and ulimits below the hard limit.
install -d /etc/containers
conf=/etc/containers/containers.conf
want=$(cat <<'CONF'
# Written by fleet-monitor scripts/setup-host.sh
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
)
if [[ ! -f $conf ]] || ! grep -q 'fleet-monitor scripts/setup-host.sh' "$conf"; then
  [[ -f $conf ]] && cp -n "$conf" "$conf.orig"
  printf '%s\n' "$want" > "$conf"
  echo "setup-host: wrote $conf"
fi
