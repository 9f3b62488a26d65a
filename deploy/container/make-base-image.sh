#!/usr/bin/env bash
# Make the Dockerfile's base image locally where no registry can be reached: a minimal Debian
# bookworm (debootstrap, from the mirror apt already uses) with Python 3.11 and venv, tagged as
# docker.io/library/python:3.11-slim so the Dockerfile's FROM line stays the normal one.
# Debian's python3 lives in /usr/bin, the python image's in /usr/local/bin: the Dockerfile calls
# `python3` from PATH, so both work.
set -euo pipefail
TAG=${1:-docker.io/library/python:3.11-slim}
if podman image exists "$TAG"; then
  echo "base image $TAG exists"; exit 0
fi
MIRROR=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOTFS=$(mktemp -d /tmp/resserve-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR" >/dev/null
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | podman import --quiet --change 'CMD ["python3"]' - "$TAG" >/dev/null
echo "base image $TAG made from $MIRROR"
