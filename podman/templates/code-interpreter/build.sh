#!/usr/bin/env bash
# Build the "code-interpreter" template image, localhost/scalebox/code-interpreter:latest.
#
# It is the base image plus Debian's Python data stack (numpy, pandas,
# matplotlib), bash and Node.js: the languages the agent's ExecutionService
# runs (agent/interpreter/). Nothing is pulled from a registry: the base
# image's tree is exported, the packages are installed into it with apt in a
# chroot (the host's network, the mirror the base image was built from), and
# the tree is imported again.
#
# Idempotent: does nothing when the image exists and was built from this
# recipe (the label io.scalebox.recipe holds this file's hash), so changing
# the package list rebuilds it. Run as root, after the base image's build.
# Environment:
#   CONTAINERS_CONF          defaults to the project's podman/containers.conf
#   SCALEBOX_BASE_IMAGE      default localhost/scalebox/base:latest
#   SCALEBOX_CI_IMAGE        default localhost/scalebox/code-interpreter:latest
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${CONTAINERS_CONF:=$(cd "$here/../.." && pwd)/containers.conf}"
export CONTAINERS_CONF

base="${SCALEBOX_BASE_IMAGE:-localhost/scalebox/base:latest}"
image="${SCALEBOX_CI_IMAGE:-localhost/scalebox/code-interpreter:latest}"
recipe="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"
# fonts-dejavu-core: matplotlib's default font; without it every plot warns.
# Debian's dependencies of these also bring scipy, sympy and (through
# pythran) a C++ toolchain and boost: the image is about 1.3 GB. Naming sympy
# first to satisfy fonttools' "scipy | sympy" did not keep scipy out.
packages=(python3-numpy python3-pandas python3-matplotlib fonts-dejavu-core bash nodejs)

log() { printf 'build code-interpreter: %s\n' "$*" >&2; }

current() {
    podman image inspect --format '{{ index .Labels "io.scalebox.recipe" }}' "$image" 2>/dev/null || true
}

[[ "$(current)" == "$recipe" ]] && exit 0

lock_dir=/run/lock
[[ -d $lock_dir ]] || lock_dir=/tmp
exec 9>"$lock_dir/scalebox-code-interpreter-image.lock"
flock 9
[[ "$(current)" == "$recipe" ]] && exit 0

podman image exists "$base" || {
    log "the base image $base is missing: build it first (podman/templates/base/build.sh)"
    exit 1
}

work="$(mktemp -d /var/tmp/scalebox-code-interpreter.XXXXXX)"
container=""
cleanup() {
    set +e
    [[ -n $container ]] && podman rm -f "$container" >/dev/null 2>&1
    local mnt
    findmnt -rn -o TARGET | grep -F "$work/" | sort -r | while read -r mnt; do
        umount -l "$mnt"
    done
    rm -rf --one-file-system "$work"
    return 0
}
trap cleanup EXIT
root="$work/rootfs"
mkdir "$root"

log "exporting $base"
container="$(podman create --label io.scalebox.build=1 "$base" /bin/true)"
podman export "$container" | tar --numeric-owner -C "$root" -x
podman rm -f "$container" >/dev/null
container=""

# apt in the chroot uses the host's resolver and a /proc of its own.
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"

log "installing ${packages[*]} (two or three minutes)"
export DEBIAN_FRONTEND=noninteractive
{
    chroot "$root" /usr/bin/apt-get update -q &&
        chroot "$root" /usr/bin/apt-get install -y -q --no-install-recommends "${packages[@]}"
} >"$work/apt.log" 2>&1 || {
    tail -n 30 "$work/apt.log" >&2
    log "apt-get failed"
    exit 1
}
umount "$root/proc"
# The interpreter's checks import these once: compile now, not in every sandbox.
chroot "$root" /usr/bin/python3 -c 'import numpy, pandas, matplotlib.pyplot' >/dev/null 2>&1 || {
    log "the Python stack does not import"
    exit 1
}
# matplotlib builds its font cache on first import (a second or two): build
# the sandbox user's now, not in every sandbox's first plot.
chroot --userspec=1000:1000 "$root" /usr/bin/env HOME=/home/user MPLBACKEND=Agg \
    /usr/bin/python3 -c 'import matplotlib.pyplot' >/dev/null 2>&1 || true
chroot "$root" /usr/bin/apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log "$root"/root/.cache
: >"$root/etc/resolv.conf"
: >"$root/etc/hostname"

log "importing as $image"
tar --numeric-owner -C "$root" -c . |
    podman import --quiet \
        --change 'CMD ["/bin/bash"]' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV MPLBACKEND=Agg' \
        --change 'LABEL io.scalebox.template=code-interpreter' \
        --change "LABEL io.scalebox.recipe=$recipe" \
        --message "scalebox code-interpreter template: base + numpy, pandas, matplotlib, nodejs" \
        - "$image" >/dev/null
log "done"
