#!/bin/sh
# Build a local Debian base image for the Dockerfile when no container registry is reachable
# (only Debian's apt mirror is needed), and import it into podman:
#
#   sudo contrib/container/make-local-base.sh            # -> localhost/debian-bookworm:local
#   podman build --build-arg BASE=localhost/debian-bookworm:local -t edge-emotion .
#
# Environment: SUITE (bookworm), MIRROR (http://deb.debian.org/debian),
# IMAGE (localhost/debian-$SUITE:local), WORKDIR (a fresh directory under /tmp, removed at the
# end), PODMAN (podman, e.g. "podman --storage-driver vfs"). Needs root, debootstrap and podman.
# The rootfs is built under /tmp, never inside the repository.
set -eu

SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
IMAGE=${IMAGE:-localhost/debian-$SUITE:local}
PODMAN=${PODMAN:-podman}

if [ "$(id -u)" -ne 0 ]; then
    echo "make-local-base.sh: debootstrap needs root" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "make-local-base.sh: apt-get install debootstrap" >&2; exit 1; }

WORKDIR=${WORKDIR:-$(mktemp -d /tmp/edge-base.XXXXXX)}
ROOTFS=$WORKDIR/rootfs
trap 'rm -rf "$WORKDIR"' EXIT INT TERM

# minbase: essential packages plus apt, about the size of debian:bookworm-slim.
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR"

# Make it look like the official slim image: apt pointed at the mirror incl. security updates,
# no cached package lists or .debs, no docs/man pages kept by later installs.
cat >"$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/usr/share/locale/*
: >"$ROOTFS/etc/hostname"
: >"$ROOTFS/etc/resolv.conf"

tar --numeric-owner -C "$ROOTFS" -c . \
    | $PODMAN import --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$IMAGE"
$PODMAN images "$IMAGE"
