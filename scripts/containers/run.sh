#!/usr/bin/env bash
# `make containers`: build every image and run the stack in containers on this machine, with no
# image registry (issue 13). Slow; not part of `make test`. Steps (each also runs alone):
#   1 engine.sh        podman, runc, docker-compose from Debian
#   2 base-images.sh   python/node/uv base images from Debian's packages and the registries
#   2b infra.sh        infrastructure images from Debian's packages, and the stand-ins
#   3 services.sh      every service image from the real Dockerfiles
#   4 up.sh, smoke.sh  the stack up to healthy, the smoke flow through the gateway
#   5 check.sh         each image: non-root, no secret, size, read-only root where k8s says so
#   6 teardown.sh      everything removed (IOT_CONTAINERS_KEEP=1 leaves the stack up)
# Timings go to $IOT_CONTAINERS_WORK/timings (default /var/tmp/iot-containers).
source "$(dirname "$0")/common.sh"
: >"$WORK/timings"
timed engine bash "$HERE/engine.sh"
timed base-images bash "$HERE/base-images.sh"
timed infra bash "$HERE/infra.sh"
timed services bash "$HERE/services.sh"
bash "$HERE/up.sh"
# The smoke flow runs with the workspace's Python (paho, httpx, python-socketio, Playwright).
UV=$(bash "$REPO/scripts/ensure-uv.sh")
(cd "$REPO" && "$UV" sync -q --all-packages --frozen)
timed smoke "$UV" run --project "$REPO" --no-sync python "$HERE/smoke.py" "$WORK"
timed check bash "$HERE/check.sh"
cat "$WORK/timings"
if [ "${IOT_CONTAINERS_KEEP:-0}" != 1 ]; then
  bash "$HERE/teardown.sh"
fi
