#!/usr/bin/env bash
# System tools the infra tests use: nginx (the gateway, run for real), promtool (Prometheus
# config and rules), docker-compose (validates docker-compose.yml without an engine) and
# hadolint (Dockerfile lint; from the workspace's dev group when Debian has none); and what the
# README's first-hour walkthrough has a newcomer type (curl, jq, mosquitto_pub), which
# iotctl/tests/test_first_hour.py runs.
# Installs only what is missing; a machine that has everything runs no apt at all.
set -euo pipefail

declare -A want=(
  [nginx]=nginx
  [promtool]=prometheus
  [docker-compose]=docker-compose
  [curl]=curl
  [jq]=jq
  [mosquitto_pub]=mosquitto-clients
)

missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: ${!want[*]} are present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "system packages: missing ${missing[*]} and not root; install them with apt-get" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

# Debian starts a daemon when its package is installed (nginx on :80, prometheus on :9090);
# the tests run their own, so forbid service starts while installing.
POLICY=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
  $SUDO chmod 755 "$POLICY"
  created_policy=1
fi
cleanup() { [ "$created_policy" -eq 1 ] && $SUDO rm -f "$POLICY"; return 0; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
# Wait for another apt run (a parallel job, unattended upgrades) instead of failing on its lock.
APT_OPTS=(-o DPkg::Lock::Timeout=600 -q)
apt_install() {
  $SUDO apt-get "${APT_OPTS[@]}" install -y --no-install-recommends "$@" >/dev/null
}

echo "system packages: installing ${missing[*]}"
# Refresh the package lists only when the install cannot find the packages without it.
if ! apt_install "${missing[@]}" 2>/dev/null; then
  $SUDO apt-get "${APT_OPTS[@]}" update >/dev/null
  apt_install "${missing[@]}"
fi

# Packages that started a daemon despite the policy (no policy-rc.d support) are stopped,
# so nothing listens on :80 or :9090 behind the tests' back.
for svc in nginx prometheus; do
  if pgrep -x "$svc" >/dev/null 2>&1 && [ -x "/etc/init.d/$svc" ]; then
    $SUDO "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
  fi
done
echo "system packages: done"
