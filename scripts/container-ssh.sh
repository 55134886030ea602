#!/usr/bin/env bash
# Opens SSH access, as root, to running systemd containers of the project's images, the way a
# real fleet is reached. Usage: scripts/container-ssh.sh DIR NETWORK CONTAINER...
#   DIR/id_ed25519      the client key (made once, 0600); its public half goes into every container
#   DIR/known_hosts     each container's host key, read through `podman exec` (the trusted channel),
#                       so SSH checks host keys strictly without ever trusting a key on first use
#   DIR/ssh_config      one Host entry per container: its address on NETWORK, key and known_hosts
# Then `ssh -F DIR/ssh_config CONTAINER` (and Ansible with that -F in ansible_ssh_common_args)
# reaches each container by name. Safe to rerun: a recreated container's new host key replaces its
# old one, and an address that changed on restart is rewritten.
set -euo pipefail

usage() {
  echo "usage: $0 DIR NETWORK CONTAINER..." >&2
  exit 2
}
(($# >= 3)) || usage
command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || {
  echo "container-ssh: ssh and ssh-keygen are required (Debian package openssh-client)" >&2
  exit 1
}
dir=$1 network=$2
shift 2
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
key=$dir/id_ed25519

if [[ ! -f $key ]]; then
  ssh-keygen -q -t ed25519 -N '' -C "fleet container access" -f "$key"
fi
chmod 0600 "$key"

# The host keys appear when ssh.service first starts (the images do not carry any). Bounded:
# 30 tries, half a second apart.
host_key() {
  local name=$1
  for _ in $(seq 30); do
    podman exec "$name" cat /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null && return 0
    sleep 0.5
  done
  echo "container-ssh: $name has no SSH host key: is ssh.service running in it?" >&2
  return 1
}

known_hosts=$(mktemp "$dir/known_hosts.XXXXXX")
ssh_config=$(mktemp "$dir/ssh_config.XXXXXX")
# shellcheck disable=SC2064  # expand now: remove this run's temporary files on failure
trap "rm -f '$known_hosts' '$ssh_config'" EXIT
echo "# Written by scripts/container-ssh.sh; rewritten on every run." >"$ssh_config"
for name in "$@"; do
  podman exec -i "$name" sh -c 'umask 077 && mkdir -p /root/.ssh && cat >/root/.ssh/authorized_keys' <"$key.pub"
  read -r type blob _ < <(host_key "$name")
  echo "$name $type $blob" >>"$known_hosts"
  address=$(podman inspect --format "{{ (index .NetworkSettings.Networks \"$network\").IPAddress }}" "$name")
  [[ -n $address ]] || {
    echo "container-ssh: $name has no address on network $network" >&2
    exit 1
  }
  printf 'Host %s\n  HostName %s\n  HostKeyAlias %s\n' "$name" "$address" "$name" >>"$ssh_config"
done
cat >>"$ssh_config" <<EOF
Host *
  User root
  IdentityFile $key
  IdentitiesOnly yes
  UserKnownHostsFile $dir/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  # Host keys are filed under the container's name, which survives a change of address.
  CheckHostIP no
EOF
chmod 0644 "$known_hosts" "$ssh_config"
mv "$known_hosts" "$dir/known_hosts"
mv "$ssh_config" "$dir/ssh_config"
trap - EXIT
