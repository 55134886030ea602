#!/usr/bin/env bash
# Runs `make TARGET...` on a fresh Debian 12 machine, installing make first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v make >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make >/dev/null
fi
exec make "$@"
