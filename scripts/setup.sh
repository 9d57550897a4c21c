#!/usr/bin/env bash
# Prepare this machine to run ScaleBox: system packages, *.localhost name
# resolution, the Python venv and the base template image.
#
# Run as root on Debian 12 (`make setup`). Idempotent and quick (a few seconds)
# when everything is already in place: each step first checks whether it has
# anything to do.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CONTAINERS_CONF="$repo/podman/containers.conf"

log() { printf 'setup: %s\n' "$*" >&2; }

if ((EUID != 0)); then
    log "must run as root (it installs packages and runs Podman as root)"
    exit 1
fi

# --- system packages --------------------------------------------------------
# runc, not crun: crun fails on this kernel's hybrid cgroups. netavark +
# aardvark-dns + iptables are the bridge network stack Podman 4.3 uses (listed
# because recommends are not installed). debootstrap + keyring + gpgv build the
# base image without a registry. libnss-myhostname resolves *.localhost.
# nodejs: the unit tests run the code interpreter's JavaScript kernel on the host.
# postgresql-client-15, redis-tools, openssl: real clients of the end-to-end tests of tcp ports.
packages=(
    podman runc conmon netavark aardvark-dns iptables catatonit uidmap slirp4netns
    debootstrap debian-archive-keyring gpgv ca-certificates
    libnss-myhostname nftables iproute2 python3-venv
    nodejs postgresql-client-15 redis-tools openssl
)
missing=()
for pkg in "${packages[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # runc is in the same transaction, so apt satisfies podman's "crun | runc"
    # with runc and never pulls crun in.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- *.localhost resolution --------------------------------------------------
# The default base domain is sbx.localhost; myhostname resolves every
# *.localhost name to loopback without a DNS server.
if ! grep -qE '^hosts:.*[[:space:]]myhostname([[:space:]]|$)' /etc/nsswitch.conf; then
    log "adding myhostname to the hosts line of /etc/nsswitch.conf"
    if grep -qE '^hosts:.*[[:space:]]dns([[:space:]]|$)' /etc/nsswitch.conf; then
        # Before dns, so a resolver that forwards *.localhost upstream never sees it.
        sed -i -E '/^hosts:/ s/[[:space:]]dns([[:space:]]|$)/ myhostname dns\1/' /etc/nsswitch.conf
    elif grep -qE '^hosts:' /etc/nsswitch.conf; then
        sed -i -E '/^hosts:/ s/$/ myhostname/' /etc/nsswitch.conf
    else
        printf 'hosts:          files myhostname dns\n' >>/etc/nsswitch.conf
    fi
fi

# --- Python venv ---------------------------------------------------------------
venv="$repo/.venv"
if [[ ! -x $venv/bin/python ]]; then
    log "creating $venv"
    python3 -m venv "$venv"
fi
# pip is slow even when there is nothing to do; reinstall only when the
# dependency list (pyproject.toml) changed since the last successful install.
stamp="$venv/.scalebox-setup-stamp"
want="$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)"
if [[ ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
    log "installing the project into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -e "$repo[test]"
    printf '%s\n' "$want" >"$stamp"
fi

# --- agent bytecode --------------------------------------------------------------
# Sandboxes mount agent/ read-only, so their python3 cannot cache bytecode: every
# boot would recompile the agent. Compile it here (the base image runs the same
# Python minor version as this venv); stale or missing files only cost that time.
"$venv/bin/python" -m compileall -q "$repo/agent" >/dev/null

# --- template images -----------------------------------------------------------
bash "$repo/podman/templates/base/build.sh"
# Built on the base image; a few minutes the first time (Debian's Python data stack).
bash "$repo/podman/templates/code-interpreter/build.sh"
