#!/usr/bin/env bash
# Enrolls this device in pull mode, once, as root, on the device: it then fetches the fleet repository
# and converges itself (ansible-pull), with outbound connections only.
#   bash enroll.sh --url URL --group critical|regular|dev [--name NAME] [--branch BRANCH]
#                  [--inventory PATH] [--vault-password-file FILE|-]
# --url        the fleet repository, as git clones it (https://..., ssh://..., git://...)
# --group      the device's push group; any group with group_vars in the repository's inventory
# --name       the device's inventory name (host_vars/NAME.yml overrides apply); default: hostname
# --branch     the branch or tag to follow; default: the repository's default branch
# --inventory  the inventory in the repository; default: inventory/hosts.yml
# --vault-password-file  the repository's vault password (the bootstrap secret) from FILE, or from
#              stdin with "-"; default: asked on the terminal. Never on the command line.
# Installs ansible-core and git from the distribution, writes /etc/fleet-pull (0700: the vault
# password 0600, the repository settings, this device's inventory entry), clones the repository and
# runs the first apply, which also installs the fleet-pull timers. Running it again re-enrolls.
set -euo pipefail

CONFIG_DIR=/etc/fleet-pull
CHECKOUT=/var/lib/fleet-pull/checkout

fail() {
  echo "enroll: $1" >&2
  exit 2
}

url="" group="" name="" branch="" inventory=inventory/hosts.yml password_file=""
while (($#)); do
  (($# >= 2)) || fail "$1 needs a value (see the usage at the top of $0)"
  case $1 in
    --url) url=$2 ;;
    --group) group=$2 ;;
    --name) name=$2 ;;
    --branch) branch=$2 ;;
    --inventory) inventory=$2 ;;
    --vault-password-file) password_file=$2 ;;
    *) fail "unknown option $1 (see the usage at the top of $0)" ;;
  esac
  shift 2
done
name=${name:-$(hostname)}
[[ -n $url ]] || fail "--url is required: the fleet repository"
[[ $group =~ ^[A-Za-z0-9_]+$ ]] || fail "--group must be a group name such as critical, regular or dev, got ${group@Q}"
[[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || fail "--name must be a host name, got ${name@Q}"
[[ $branch =~ ^[A-Za-z0-9._/-]*$ ]] || fail "--branch must be a branch or tag name, got ${branch@Q}"
[[ $inventory =~ ^[A-Za-z0-9._/-]+$ && $inventory != /* && $inventory != *..* ]] ||
  fail "--inventory must be a path inside the repository, got ${inventory@Q}"
((EUID == 0)) || fail "run as root"
command -v systemctl >/dev/null || fail "systemd is required"

if [[ $password_file == - ]]; then
  IFS= read -r password || true
elif [[ -n $password_file ]]; then
  [[ -r $password_file ]] || fail "cannot read $password_file"
  IFS= read -r password <"$password_file" || true
else
  [[ -r /dev/tty ]] || fail "no terminal to ask for the vault password on: use --vault-password-file"
  IFS= read -rs -p "Vault password of the fleet repository: " password </dev/tty || true
  echo >&2
fi
[[ -n $password ]] || fail "the vault password is empty"

missing=()
command -v ansible-pull >/dev/null || missing+=(ansible-core)
command -v git >/dev/null || missing+=(git)
if ((${#missing[@]})); then
  echo "enroll: installing ${missing[*]} from the distribution"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -d $CHECKOUT/.git ]]; then
  echo "enroll: cloning $url"
  mkdir -p "$(dirname "$CHECKOUT")"
  git clone --quiet ${branch:+--branch "$branch"} -- "$url" "$CHECKOUT"
fi
inventory_dir=$(dirname "$CHECKOUT/$inventory")
[[ -f $CHECKOUT/$inventory ]] || fail "no inventory $inventory in the repository"
[[ -e $inventory_dir/group_vars/$group.yml || -e $inventory_dir/group_vars/$group ]] ||
  fail "group '$group' has no group_vars in the repository's inventory ($inventory)"

install -d -m 0700 -o root -g root "$CONFIG_DIR"
(
  umask 077
  printf '%s\n' "$password" >"$CONFIG_DIR/vault-password.new"
  mv "$CONFIG_DIR/vault-password.new" "$CONFIG_DIR/vault-password"
  {
    echo "# Written by scripts/enroll.sh; read by /usr/local/sbin/fleet-pull."
    printf 'FLEET_PULL_URL=%q\nFLEET_PULL_BRANCH=%q\nFLEET_PULL_INVENTORY=%q\nFLEET_PULL_NAME=%q\n' \
      "$url" "$branch" "$inventory" "$name"
  } >"$CONFIG_DIR/pull.env"
  cat >"$CONFIG_DIR/inventory.yml" <<INVENTORY
---
# Written by scripts/enroll.sh: this device, converged by itself (group pull), in push group $group.
all:
  children:
    pull:
      hosts:
        $name:
          ansible_connection: local
          ansible_python_interpreter: /usr/bin/python3
    devices:
      children:
        $group:
          hosts:
            $name:
INVENTORY
)
unset password

echo "enroll: $name enrolled in group $group; first apply (ansible-pull)"
"$CHECKOUT/roles/fleet_pull/files/fleet-pull" || {
  echo "enroll: the first apply failed; the log is above (fleet-pull runs it again by hand)" >&2
  exit 1
}
echo "enroll: done. Timers: systemctl list-timers 'fleet-pull*'; runs: journalctl -u 'fleet-pull*'"
