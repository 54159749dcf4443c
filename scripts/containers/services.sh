#!/usr/bin/env bash
# Step 3: every service image, from the real Dockerfiles, tagged as docker-compose.yml names
# them (iot/<service>:$IOT_VERSION). Build steps use the host network (package registries) and
# the host's CA bundle, mounted read-only into RUN steps only (build_mounts in common.sh).
#   services.sh [service ...]   (default: all of them)
source "$(dirname "$0")/common.sh"
SERVICES=(signing device-management ingest-bridge stream-agents monitoring-api simulator)
[ $# -gt 0 ] && SERVICES=("$@")
cd "$REPO"
for s in "${SERVICES[@]}"; do
  log "building iot/$s:${IOT_VERSION:-dev}"
  timed "build-$s" pn build --format docker --network host --label "$LABEL" $(build_mounts) \
    -f "$s/Dockerfile" -t "iot/$s:${IOT_VERSION:-dev}" . >"$WORK/build-$s.log" 2>&1 \
    || { tail -30 "$WORK/build-$s.log" >&2; log "build of $s failed (log: $WORK/build-$s.log)"; exit 1; }
done
