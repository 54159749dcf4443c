#!/usr/bin/env bash
# Step 5: each service image, checked as a user would want it: runs as a non-root user, holds
# no secret (no private key, .env or credential file; no secret in its configured environment),
# its size; and each of the platform's running containers (up.sh) has the read-only root file
# system the k8s manifests require. Writes $WORK/check.txt; exits 1 if any check fails.
source "$(dirname "$0")/common.sh"
SERVICES=(signing device-management ingest-bridge stream-agents monitoring-api simulator)
TAG=${IOT_VERSION:-dev}
fail=0
out="$WORK/check.txt"
printf '%-20s %-8s %-10s %-8s %s\n' image user secrets size-MB read-only-root >"$out"
for s in "${SERVICES[@]}"; do
  image="iot/$s:$TAG"
  user=$(podman image inspect --format '{{.Config.User}}' "$image")
  uid=$(podman run --rm --health-cmd none --network none --entrypoint id "$image" -u)
  user_ok=ok
  if [ -z "$user" ] || [ "$user" = root ] || [ "$uid" = 0 ]; then user_ok="ROOT"; fail=1; fi
  # Secrets: key material or credential files anywhere outside the OS's and the libraries'
  # public CA bundles, and any *PASSWORD*/*SECRET*/*TOKEN* variable with a value in the image.
  found=$(podman run --rm --health-cmd none --network none --read-only --entrypoint sh "$image" -c '
    find / -xdev -type f \( -name "*.pem" -o -name "*.key" -o -name ".env" -o -name "id_rsa*" \
      -o -name "*.p12" -o -name "*.pfx" -o -name ".netrc" -o -name ".pypirc" -o -name ".npmrc" \) \
      -not -path "/usr/*" -not -path "/etc/ssl/*" -not -path "*/site-packages/*" \
      -not -path "/proc/*" 2>/dev/null
    grep -rIl -e "-----BEGIN [A-Z ]*PRIVATE KEY-----" /app /root /home /etc 2>/dev/null \
      | grep -v -e "/site-packages/" -e "^/etc/ssl/" || true' || true)
  envs=$(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image" \
    | grep -Ei '^[A-Z_]*(PASSWORD|SECRET|TOKEN|PRIVATE)[A-Z_]*=.+' || true)
  secrets_ok=none
  if [ -n "$found$envs" ]; then secrets_ok="FOUND"; fail=1; log "$image: $found $envs"; fi
  size=$(( $(podman image inspect --format '{{.Size}}' "$image") / 1000000 ))
  ro="-"
  while read -r c name img; do
    [ "${img#localhost/}" = "$image" ] || continue
    case "$name" in *mosquitto-init*) continue ;; esac
    if [ "$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$c")" = true ]; then
      ro="yes"
    else
      ro="NO ($name)"; fail=1
    fi
  done < <(podman ps -a --filter "label=com.docker.compose.project=$PROJECT" --format '{{.ID}} {{.Names}} {{.Image}}')
  printf '%-20s %-8s %-10s %-8s %s\n' "$s" "$user_ok" "$secrets_ok" "$size" "$ro" >>"$out"
done
cat "$out"
exit $fail
