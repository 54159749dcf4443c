#!/usr/bin/env bash
# Step 6: remove every container, pod, network, volume and image `make containers` made (all
# carry $LABEL or belong to the compose project), and its scratch space; the machine is left
# as it was (the Debian packages of step 1 stay installed).
#   IOT_CONTAINERS_KEEP_IMAGES=1 keeps the images (and the build cache) for a warm rebuild.
source "$(dirname "$0")/common.sh"
command -v podman >/dev/null || exit 0
if command -v docker-compose >/dev/null && [ -f "$WORK/compose.yml" ] && [ -S "$WORK/podman.sock" ]; then
  DOCKER_HOST="unix://$WORK/podman.sock" docker-compose --project-name "$PROJECT" \
    --project-directory "$REPO" -f "$WORK/compose.yml" down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
fi
# The health-check loop and podman's API service that up.sh started, by their pids.
for f in health-ticker podman-service; do
  [ -s "$WORK/$f.pid" ] && kill "$(cat "$WORK/$f.pid")" 2>/dev/null || true
  rm -f "$WORK/$f.pid"
done
ids=$( { podman ps -aq --filter "label=$LABEL"; podman ps -aq --filter "label=com.docker.compose.project=$PROJECT"; } | sort -u)
[ -n "$ids" ] && podman rm -f -t 5 $ids >/dev/null
nets=$(podman network ls -q --filter "label=com.docker.compose.project=$PROJECT")
[ -n "$nets" ] && podman network rm -f $nets >/dev/null
vols=$(podman volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
[ -n "$vols" ] && podman volume rm -f $vols >/dev/null
# netavark (podman 4.3) leaves its iptables chains, and the jumps into them from FORWARD,
# PREROUTING, OUTPUT and POSTROUTING, behind when the last network goes. With no container of
# any kind left, remove them: the firewall tables are as they were before step 1.
if [ -z "$(podman ps -aq)" ] && command -v iptables-save >/dev/null; then
  for table in filter nat; do
    jumps=$(iptables-save -t "$table" | grep -E '^-A .* -j NETAVARK' | grep -vE '^-A NETAVARK' || true)
    while read -r rule; do
      [ -n "$rule" ] && { eval "iptables -t $table ${rule/#-A /-D }" || true; }
    done <<<"$jumps"
    chains=$(iptables-save -t "$table" | sed -n 's/^:\(NETAVARK[^ ]*\) .*/\1/p')
    for c in $chains; do iptables -t "$table" -F "$c" || true; done
    for c in $chains; do iptables -t "$table" -X "$c" || true; done
  done
fi
if [ "${IOT_CONTAINERS_KEEP_IMAGES:-0}" != 1 ]; then
  imgs=$(podman images -aq --filter "label=$LABEL" | sort -u)
  [ -n "$imgs" ] && podman rmi -f $imgs >/dev/null 2>&1 || true
  podman image prune -f >/dev/null
  rm -rf "$WORK"
fi
log "torn down (left: $(podman ps -aq | wc -l) containers, $(podman images -q | wc -l) images)"
