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
# e2fsprogs: mkfs.ext4 makes each sandbox's own writable filesystem (storage_gb).
# runsc: gVisor, the "gvisor" sandbox runtime (podman/runsc-wrapper.sh).
# postgresql-client-15, redis-tools, openssl: real clients of the end-to-end tests of tcp ports.
packages=(
    podman runc conmon netavark aardvark-dns iptables catatonit uidmap slirp4netns e2fsprogs
    debootstrap debian-archive-keyring gpgv ca-certificates
    libnss-myhostname nftables iproute2 python3-venv
    nodejs postgresql-client-15 redis-tools openssl runsc
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

# --- the gvisor runtime ----------------------------------------------------------
# podman/containers.conf names this path for the runtime "runsc"; the wrapper lets
# Debian's runsc use gVisor's own network stack on this kernel (see the script).
runsc_wrapper=/usr/local/lib/scalebox/runsc
if ! cmp -s "$repo/podman/runsc-wrapper.sh" "$runsc_wrapper"; then
    log "installing $runsc_wrapper"
    install -D -m 0755 "$repo/podman/runsc-wrapper.sh" "$runsc_wrapper"
fi

# --- sandbox isolation ---------------------------------------------------------
# Every sandbox runs in a user namespace of its own (Podman's --userns=auto):
# rootful Podman takes each one's 65536 uids and gids from the ranges of the user
# "containers" in /etc/subuid and /etc/subgid. The range is the upper half of the
# uid space, far above any real account's uid. See docs/security.md.
for file in /etc/subuid /etc/subgid; do
    if ! grep -qE '^containers:' "$file" 2>/dev/null; then
        log "adding the containers range to $file (user namespaces of sandboxes)"
        printf 'containers:2147483647:2147483648\n' >>"$file"
    fi
done
# Each sandbox's writable layer is a filesystem of its own, mounted on its layer
# folder under Podman's overlay home (controlplane/runtime/disklimit.py). Unless
# told otherwise, every podman process bind-mounts that home over itself when it
# starts and lazily unmounts it when it exits with nothing mounted, which would
# detach or cover those mounts. skip_mount_home stops both, for every podman on
# the machine; the other values are Podman's defaults.
storage_conf=/etc/containers/storage.conf
if [[ ! -e $storage_conf ]]; then
    log "writing $storage_conf (overlay, skip_mount_home)"
    mkdir -p /etc/containers
    cat >"$storage_conf" <<'EOF'
# Written by ScaleBox's scripts/setup.sh: Podman's defaults, plus skip_mount_home
# so that Podman leaves mounts under its overlay home alone (sandbox disk limits).
[storage]
driver = "overlay"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"

[storage.options.overlay]
skip_mount_home = "true"
EOF
elif ! grep -qE '^[[:space:]]*skip_mount_home[[:space:]]*=[[:space:]]*"?true"?' "$storage_conf"; then
    log "WARNING: $storage_conf does not set skip_mount_home = \"true\" under [storage.options.overlay];"
    log "         sandbox disk limits can come undone when another podman starts or exits"
fi
# Each sandbox may have up to 1024 processes and threads (its pids limit); the
# kernel's default pid_max (32768) would let some 30 fork bombs use up every pid
# on the host. Raise it to the 64-bit maximum, now and at boot.
pid_max=4194304
if (($(cat /proc/sys/kernel/pid_max) < pid_max)); then
    log "raising kernel.pid_max to $pid_max"
    echo "$pid_max" >/proc/sys/kernel/pid_max || log "could not raise kernel.pid_max (not fatal)"
fi
if [[ -d /etc/sysctl.d && ! -f /etc/sysctl.d/60-scalebox.conf ]]; then
    printf '# ScaleBox: room for the pids limits of many sandboxes (scripts/setup.sh)\nkernel.pid_max = %s\n' \
        "$pid_max" >/etc/sysctl.d/60-scalebox.conf
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
