#!/usr/bin/env bash
# Step 1: the container engine, from Debian's packages.
# podman (with buildah inside) builds our Dockerfiles as they are: `RUN --mount=type=cache` works
# and the `# syntax=docker/dockerfile:1` line is ignored, where Docker's BuildKit would first pull
# that frontend image from Docker Hub, which this machine cannot reach. runc, because crun fails
# here ("cgroups in hybrid mode not supported"). docker-compose (1.29) runs the real compose file
# against podman's Docker-compatible API: it honours depends_on conditions (service_healthy,
# service_completed_successfully), which Debian's podman-compose 1.0 does not.
source "$(dirname "$0")/common.sh"
need=()
# iptables: netavark (podman's network backend) sets up each network with it ("netavark: No
# such file or directory" without it); a Recommends, which --no-install-recommends skips.
for p in podman runc debootstrap docker-compose bc iptables; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} from Debian"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${need[@]}" uidmap slirp4netns fuse-overlayfs netavark aardvark-dns >/dev/null
fi
podman --version
podman info --format 'runtime {{.Host.OCIRuntime.Name}}, cgroups {{.Host.CgroupsVersion}}, network {{.Host.NetworkBackend}}'
docker-compose version --short
