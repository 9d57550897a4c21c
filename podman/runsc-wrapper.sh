#!/bin/sh
# runsc (gVisor), as Podman runs it for ScaleBox's "gvisor" sandboxes. Installed
# by scripts/setup.sh as /usr/local/lib/scalebox/runsc, the path that
# podman/containers.conf gives for the runtime "runsc".
#
# Why a wrapper: Debian 12's runsc (release 20221219) refuses to start gVisor's
# own network stack ("netstack", the default --network=sandbox) on this kernel:
#   starting container: setting up network: creating interfaces from net
#   namespace "/proc/N/ns/net": cannot run with network enabled in root network namespace
# It decides whether it is in the host's network namespace by whether
# /proc/sys/net/core/rmem_default exists, and Linux 6.x shows that file in every
# network namespace (gVisor issue #10704, fixed upstream in 2024). So runsc runs
# here in a mount namespace of its own in which /proc/sys/net is an empty
# read-only tmpfs: the test then answers "not the root namespace", which is true
# (Podman and netavark made the container's namespace and its veth, which
# netstack takes over). Nothing else of runsc was seen to need /proc/sys/net.
#
# The alternative, --network=host, would keep the container's namespace too but
# hand every socket call of the sandbox to the host's kernel: a weaker boundary.
set -e
exec unshare --mount --propagation private /bin/sh -c \
    'mount -t tmpfs -o ro,size=4k,mode=0555 scalebox-runsc /proc/sys/net && exec /usr/bin/runsc "$@"' \
    runsc "$@"
