#!/usr/bin/env bash
# Build the "base" template image, localhost/scalebox/base:latest, from scratch.
#
# No container registry can be reached from these machines, so nothing is
# pulled: debootstrap lays down a minimal Debian bookworm from the Debian mirror
# apt already uses, and `podman import` turns that directory into an image.
# Every sandbox image starts from this one; the agent itself is not baked in
# (it is bind-mounted read-only at run time) so the image only needs python3.
#
# Idempotent: does nothing when the image already exists. Run as root.
# Environment:
#   CONTAINERS_CONF        defaults to the project's podman/containers.conf
#   SCALEBOX_BASE_IMAGE    image name (default localhost/scalebox/base:latest)
#   SCALEBOX_DEBIAN_MIRROR Debian mirror URL (default: the one apt is configured with)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${CONTAINERS_CONF:=$(cd "$here/../.." && pwd)/containers.conf}"
export CONTAINERS_CONF

image="${SCALEBOX_BASE_IMAGE:-localhost/scalebox/base:latest}"
suite=bookworm

log() { printf 'build base: %s\n' "$*" >&2; }

if podman image exists "$image"; then
    exit 0
fi

# Two set-ups racing (e.g. the appliance and a test run) must not both spend a
# minute building; the loser waits and then finds the image.
lock_dir=/run/lock
[[ -d $lock_dir ]] || lock_dir=/tmp
exec 9>"$lock_dir/scalebox-base-image.lock"
flock 9
if podman image exists "$image"; then
    exit 0
fi

# Reuse the mirror apt is configured with: it is the one this machine can
# reach (and may be a local or snapshot mirror), which a hard-coded host is not.
apt_debian_mirror() {
    local files=() f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] && files+=("$f")
    done
    ((${#files[@]})) || return 0
    # One-line ("deb [opts] URI suite ...") and deb822 ("URIs: URI ...") forms;
    # keep the main archive (path ends in /debian), not debian-security.
    grep -hoE '^[[:space:]]*(deb([[:space:]]+\[[^]]*\])?|URIs:)[[:space:]]+[^[:space:]#]+' \
        "${files[@]}" 2>/dev/null |
        awk '{print $NF}' | grep -E '/debian/?$' | head -n1 || true
}
mirror="${SCALEBOX_DEBIAN_MIRROR:-$(apt_debian_mirror)}"
mirror="${mirror:-http://deb.debian.org/debian}"

# On disk, not in /tmp (often tmpfs): the tree is about 260 MB.
work="$(mktemp -d /var/tmp/scalebox-base.XXXXXX)"
cleanup() {
    # debootstrap mounts /proc and /sys inside the tree and leaves them mounted
    # if it fails; unmount first so rm never walks into the host's /proc or /sys.
    # Best effort, and never the script's exit status: errexit is off here.
    set +e
    local mnt
    findmnt -rn -o TARGET | grep -F "$work/" | sort -r | while read -r mnt; do
        umount -l "$mnt"
    done
    rm -rf --one-file-system "$work"
    return 0
}
trap cleanup EXIT
root="$work/rootfs"

log "debootstrap $suite from $mirror (about a minute)"
debootstrap --variant=minbase --include=python3,ca-certificates,procps,iproute2 \
    "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    log "debootstrap failed"
    exit 1
}

# Sandboxes run user code as this unprivileged user, not root.
chroot "$root" /usr/sbin/useradd --create-home --home-dir /home/user \
    --uid 1000 --user-group --shell /bin/bash user
chroot "$root" /usr/bin/apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
# Podman writes these per container; the builder's own must not leak into the image.
: >"$root/etc/resolv.conf"
: >"$root/etc/hostname"

log "importing as $image"
# --numeric-owner: ownership must come from the tree's uids, not the host's names.
tar --numeric-owner -C "$root" -c . |
    podman import --quiet \
        --change 'CMD ["/bin/bash"]' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'LABEL io.scalebox.template=base' \
        --message "scalebox base template: debian $suite minbase + python3" \
        - "$image" >/dev/null
log "done"
