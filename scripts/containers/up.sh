#!/usr/bin/env bash
# Step 4a: the stack up with the real docker-compose.yml plus docker-compose.containers.yml,
# through docker-compose against podman's Docker-compatible API, and wait until every container's
# health check passes. Writes $WORK/compose.yml (rendered), $WORK/ports.json, $WORK/.env.
source "$(dirname "$0")/common.sh"
export DOCKER_HOST="unix://$WORK/podman.sock"
compose() { docker-compose --project-name "$PROJECT" --project-directory "$REPO" -f "$WORK/compose.yml" "$@"; }

# podman's API service, for docker-compose (ended by teardown.sh, by its pid).
if ! [ -S "$WORK/podman.sock" ] || ! curl -sf --unix-socket "$WORK/podman.sock" http://d/_ping >/dev/null; then
  podman system service --time=0 "$DOCKER_HOST" >"$WORK/podman-service.log" 2>&1 &
  echo $! >"$WORK/podman-service.pid"
  for _ in $(seq 100); do curl -sf --unix-socket "$WORK/podman.sock" http://d/_ping >/dev/null && break; sleep 0.1; done
fi
# podman runs health checks from systemd timers; there is no systemd here, so this loop is the
# timer: `podman healthcheck run` (what the timer calls) on each running container of ours.
if ! [ -s "$WORK/health-ticker.pid" ] || ! kill -0 "$(cat "$WORK/health-ticker.pid")" 2>/dev/null; then
  (
    while true; do
      for c in $(podman ps -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
        podman healthcheck run "$c" >/dev/null 2>&1 || true
      done
      sleep "${IOT_CONTAINERS_HEALTH_INTERVAL:-3}"
    done
  ) >/dev/null 2>&1 &
  echo $! >"$WORK/health-ticker.pid"
fi

# Writes only what is missing (.env, the TLS pair), so a kept $WORK keeps its secrets.
bash "$REPO/scripts/generate-env.sh" "$WORK" >/dev/null
# The TLS pair generate-env.sh made for this run (compose resolves a relative MQTT_TLS_DIR
# against the repository). The Debian Mosquitto image runs as its own user from the start,
# so this throw-away key must be readable by it through the bind mount.
grep -q '^MQTT_TLS_DIR=' "$WORK/.env" || echo "MQTT_TLS_DIR=" >>"$WORK/.env"
sed -i "s|^MQTT_TLS_DIR=.*|MQTT_TLS_DIR=$WORK/infra/mosquitto/tls|" "$WORK/.env"
chmod 0644 "$WORK/infra/mosquitto/tls/tls.key"
docker-compose --project-directory "$REPO" --env-file "$WORK/.env" \
  -f "$REPO/docker-compose.yml" -f "$REPO/docker-compose.containers.yml" config \
  | python3 "$HERE/render_compose.py" "$WORK/compose.yml" "$WORK/ports.json"
log "published on loopback: $(tr -d '\n ' <"$WORK/ports.json")"

t0=$(date +%s.%N)
compose up -d --no-build >"$WORK/compose-up.log" 2>&1 || { tail -30 "$WORK/compose-up.log" >&2; exit 1; }
# Every container with a health check healthy, every one-shot (migrations) exited 0.
deadline=$(( $(date +%s) + ${IOT_CONTAINERS_UP_TIMEOUT:-600} ))
while true; do
  # From the status text alone ("Up 3 minutes (healthy)", "Exited (0) 2 minutes ago"):
  # podman 4.3's {{.State}} is that same text for some containers, not "running"/"exited".
  pending=$(podman ps -a --filter "label=com.docker.compose.project=$PROJECT" \
    --format '{{.Names}} {{.Status}}' | awk '
      $2 == "Exited" && $3 != "(0)" { print "FAILED:" $1; next }
      $2 == "Exited" { next }
      $2 == "Up" && $0 ~ /\((starting|unhealthy)\)/ { print $1; next }
      $2 != "Up" { print $1 }')
  [ -z "$pending" ] && break
  if grep -q FAILED: <<<"$pending" || [ "$(date +%s)" -gt "$deadline" ]; then
    log "not healthy: $pending"
    podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}} {{.Status}}' >&2
    exit 1
  fi
  sleep 1
done
printf 'up-to-healthy %.1f\n' "$(echo "$(date +%s.%N) - $t0" | bc)" >>"$WORK/timings"
podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}} {{.Status}}' >&2
