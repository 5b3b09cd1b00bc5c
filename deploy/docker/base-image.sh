#!/bin/sh
# The project's base image, built from Debian's archive alone (no image registry needed): Debian
# bookworm (minbase) with python3, venv, pip and the host's own local CA certificates, imported into the
# engine as FLATEVAL_BASE_IMAGE (default below). Idempotent: when the tag exists nothing is done.
# Prints the tag. Needs root, mmdebstrap and the docker CLI (docs/deploy.md):
#   deploy/docker/base-image.sh [TAG]
# then build with it:   docker build --build-arg BASE_IMAGE=<tag> ...   (compose: FLATEVAL_BASE_IMAGE)
#
# Why each step:
# * mmdebstrap with no mirror argument uses this machine's apt sources, so it works wherever apt does.
# * python-is-python3: images and compose commands say `python`, as on the python:* images.
# * /usr/local/share/ca-certificates/*.crt (the CAs this host added to its own trust store, e.g. a
#   company proxy's) are copied in and trusted, and PIP_CERT points pip inside builds at that store
#   (a venv's pip otherwise trusts only its bundled certifi).
# * Debian's EXTERNALLY-MANAGED marker is removed: an image is the "environment", and Dockerfiles
#   written for the python:* images install with the system pip.
# Bump the revision in the tag when this recipe changes, so an old image is not reused.
set -eu
TAG=${1:-${FLATEVAL_BASE_IMAGE:-flateval/base:bookworm-r1}}
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base-image: $TAG exists, nothing to do" >&2
  echo "$TAG"
  exit 0
fi
work=$(mktemp -d "${TMPDIR:-/var/tmp}/flateval-base.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
started=$(date +%s)
mmdebstrap --quiet --variant=minbase \
  --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
  --customize-hook='for c in /usr/local/share/ca-certificates/*.crt; do if [ -f "$c" ]; then cp "$c" "$1/usr/local/share/ca-certificates/"; fi; done' \
  --customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1' \
  --customize-hook='rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  bookworm "$work/rootfs.tar"
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' \
  --message "flateval base image: Debian bookworm minbase + python3 (deploy/docker/base-image.sh)" \
  "$work/rootfs.tar" "$TAG" >/dev/null
echo "base-image: built $TAG in $(( $(date +%s) - started )) s" >&2
echo "$TAG"
