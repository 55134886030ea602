#!/usr/bin/env bash
# Fails fast, in one line, unless every container on a project network resolves every other one by
# name and reaches it: without DNS on the network a rollout would only fail minutes later, at its
# verify step, with "Name or service not known" in every agent's journal.
#   scripts/check-network.sh NETWORK CONTAINER...
set -euo pipefail

(($# >= 2)) || {
  echo "usage: $0 NETWORK CONTAINER..." >&2
  exit 2
}
network=$1
shift

if [[ $(podman network inspect --format '{{.DNSEnabled}}' "$network") != true ]]; then
  echo "network $network has no DNS, so containers cannot find each other by name: run scripts/setup-host.sh (it recreates the network with DNS)" >&2
  exit 1
fi

# Reaching a name means a TCP answer from its container: an accepted or a refused connection
# (nothing listens on port 9), never a timeout or "unreachable".
# shellcheck disable=SC2016  # the Python program is single-quoted on purpose
probe='
import socket, sys
for name in sys.argv[1:]:
    try:
        address = socket.getaddrinfo(name, 9, type=socket.SOCK_STREAM)[0][4]
    except OSError as error:
        sys.exit(f"cannot resolve {name} ({error.strerror})")
    try:
        socket.create_connection(address[:2], timeout=3).close()
    except ConnectionRefusedError:
        pass
    except OSError as error:
        sys.exit(f"resolves {name} to {address[0]} but cannot reach it ({error})")
'
for container in "$@"; do
  others=()
  for other in "$@"; do [[ $other == "$container" ]] || others+=("$other"); done
  if ! problem=$(podman exec "$container" python3 -c "$probe" "${others[@]}" 2>&1); then
    echo "container $container on network $network $problem: podman's network needs DNS (netavark + aardvark-dns); run scripts/setup-host.sh" >&2
    exit 1
  fi
done
echo "network $network: all ${#@} containers resolve and reach each other by name"
