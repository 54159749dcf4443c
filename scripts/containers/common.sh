# Sourced by every scripts/containers/*.sh: one place for the engine's settings and names.
# shellcheck shell=bash
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# podman reads its settings from our file: nothing under /etc/containers is changed.
export CONTAINERS_CONF="$HERE/containers.conf"
# Scratch space (debootstrap root, downloaded binaries, timings); removed by teardown.sh.
WORK=${IOT_CONTAINERS_WORK:-/var/tmp/iot-containers}
mkdir -p "$WORK"
# Every image, container, network and volume we make carries this label (teardown removes them).
LABEL=io.iot.containers=1
# The compose project: its containers, networks and volumes are named iot-ct_*.
PROJECT=${IOT_CONTAINERS_PROJECT:-iot-ct}
# Versions of what the base images hold (the Dockerfiles name python:3.11, node:20, uv 0.13.9).
NODE_VERSION=${NODE_VERSION:-20.20.2}
NPM_VERSION=${NPM_VERSION:-10.9.9}
UV_VERSION=${UV_VERSION:-0.13.9}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

pn() { nice -n 10 podman "$@"; }
log() { printf '[containers %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# The CA bundle this machine's package clients trust (pip's configuration names it). Builds
# mount it read-only; no image that ships contains it.
host_ca_bundle() {
  local ca
  ca=$(python3 -m pip config get global.cert 2>/dev/null || true)
  [ -n "$ca" ] && [ -r "$ca" ] || ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
  [ -r "$ca" ] || { log "no CA bundle found (pip's global.cert, SSL_CERT_FILE)"; return 1; }
  printf '%s\n' "$ca"
}

# Build-time only mounts: the host's CA bundle over the image's, and configuration that makes
# uv and npm use it. `podman build -v` mounts into RUN steps and never into a layer.
build_mounts() {
  local ca
  ca=$(host_ca_bundle)
  printf '%s\n' \
    "-v" "$ca:/etc/ssl/certs/ca-certificates.crt:ro" \
    "-v" "$HERE/build/uv.toml:/etc/uv/uv.toml:ro" \
    "-v" "$HERE/build/npmrc:/usr/local/etc/npmrc:ro"
}

# Time a step and append "name seconds" to $WORK/timings.
timed() {
  local name=$1 t0 rc=0
  shift
  t0=$(date +%s.%N)
  "$@" || rc=$?
  printf '%s %.1f\n' "$name" "$(echo "$(date +%s.%N) - $t0" | bc)" >>"$WORK/timings"
  return $rc
}
