#!/usr/bin/env bash
# Builds the container base images for Molecule and the lab: mmdebstrap from the Debian archive, then
# `podman import`. Usage: scripts/images.sh NAME...   (NAME: device-debian12 device-debian13 server-debian12)
# Each image is tagged localhost/fleet-NAME:latest and labelled with the hash of its recipe: an image
# whose label matches is reused, so a second run builds nothing and a changed recipe rebuilds.
set -euo pipefail
cd "$(dirname "$0")/.."

MIRROR=${FLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Minimal systemd hosts; python3 because Ansible needs it, an SSH server (with SFTP for file
# transfers) because a real fleet is reached over SSH. No psutil: the role's install must really run.
BASE_PACKAGES=systemd,systemd-sysv,python3,ca-certificates,openssh-server,openssh-sftp-server
usage() {
  echo "usage: $0 NAME...   (NAME: device-debian12 device-debian13 server-debian12)" >&2
  exit 2
}

# Prints the recipe of image NAME as "suite packages [lists]"; the image label is the hash of this
# line. "lists": the image keeps the package lists of its build and apt's cache of them (not the
# downloaded packages), as an installed Debian does, and the role installs from them without a refresh; device-debian13 has none, so the devices scenario also
# covers the refresh.
recipe() {
  case $1 in
    device-debian12) echo "bookworm $BASE_PACKAGES lists" ;;
    device-debian13) echo "trixie $BASE_PACKAGES" ;;
    # The server components come preinstalled (Debian packages) so the scenarios and the rollout
    # benchmark skip that download; the roles still install a missing one.
    server-debian12) echo "bookworm $BASE_PACKAGES,prometheus,prometheus-pushgateway,prometheus-alertmanager" ;;
    *) return 1 ;;
  esac
}

# Bump when the build steps below change in a way the recipe line does not show.
BUILD_VERSION=3

build() {
  local name=$1 tag="localhost/fleet-$1:latest" suite packages lists hash current workdir
  read -r suite packages lists < <(recipe "$name")
  hash=$(printf '%s|%s|%s|%s' "$BUILD_VERSION" "$suite" "$packages${lists:+|$lists}" "$MIRROR" | sha256sum | cut -c1-16)
  current=$(podman image inspect --format '{{ index .Labels "fleet.recipe" }}' "$tag" 2>/dev/null || true)
  if [[ $current == "$hash" ]]; then
    echo "images: $tag is up to date ($hash)"
    return 0
  fi
  echo "images: building $tag from $suite ($packages): a few minutes, mmdebstrap's progress follows"
  workdir=$(mktemp -d /var/tmp/fleet-image.XXXXXX)
  # shellcheck disable=SC2064  # expand now: the trap must remove this build's directory
  trap "rm -rf '$workdir'" RETURN
  # No recommends keeps the images small. An empty machine-id lets podman --systemd=always give each
  # container its own, as a freshly provisioned device would have. For the same reason the SSH
  # host keys are not baked in: ssh.service generates them at first boot, so every container has
  # keys of its own (ssh-keygen -A leaves existing keys alone, so they survive restarts).
  local keep_lists=()
  if [[ -n $lists ]]; then
    # shellcheck disable=SC2016  # $1 is mmdebstrap's: the root directory it builds
    keep_lists=(--skip=cleanup/apt/lists,cleanup/apt/cache --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb')
  fi
  mmdebstrap --variant=minbase --include="$packages" "${keep_lists[@]}" \
    --aptopt='APT::Install-Recommends "false"' \
    --customize-hook='rm -f "$1/etc/machine-id" && touch "$1/etc/machine-id"' \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
    --customize-hook='mkdir -p "$1/etc/systemd/system/ssh.service.d" && printf "%s\n" "[Service]" "ExecStartPre=" "ExecStartPre=/usr/bin/ssh-keygen -A" "ExecStartPre=/usr/sbin/sshd -t" >"$1/etc/systemd/system/ssh.service.d/host-keys.conf"' \
    "$suite" "$workdir/rootfs.tar" "$MIRROR"
  podman import --quiet \
    --change 'CMD ["/lib/systemd/systemd"]' \
    --change "LABEL fleet.recipe=$hash" \
    --change "LABEL fleet.suite=$suite" \
    "$workdir/rootfs.tar" "$tag" >/dev/null
  echo "images: built $tag ($hash)"
}

(($#)) || usage
for name in "$@"; do
  recipe "$name" >/dev/null || usage
done
command -v mmdebstrap >/dev/null && command -v podman >/dev/null || {
  echo "images: mmdebstrap and podman are required; run 'make host' first" >&2
  exit 1
}
# Parallel callers (two scenarios, the lab) wait for each other instead of building the same image twice.
exec 9>/var/tmp/fleet-images.lock
flock 9
for name in "$@"; do
  build "$name"
done
