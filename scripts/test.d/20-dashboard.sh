#!/usr/bin/env bash
# Dashboard test prerequisites: Debian's chromium (driven by Playwright) and the built front end.
# Idempotent: each step is skipped when its result is already in place and up to date.
set -euo pipefail
cd "$(dirname "$0")/../.."
FRONTEND=monitoring-api/frontend
OUT=monitoring-api/src/monitoring_api/static/dashboard

if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (apt)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  if ! $SUDO apt-get install -y --no-install-recommends chromium; then
    # The package index may be stale or absent: refresh it only in that case.
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends chromium
  fi
fi

cd "$FRONTEND"
# Reinstall only when the lock file changed since the last install.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
  else
    npm install --no-audit --no-fund --loglevel=error
  fi
fi

# Rebuild only when a source file is newer than the last build.
STAMP="../src/monitoring_api/static/dashboard/index.html"
if [ ! -f "$STAMP" ] || [ -n "$(find src index.html package-lock.json vite.config.js -newer "$STAMP" -print -quit 2>/dev/null)" ]; then
  npm run build --silent
fi
echo "dashboard built in $OUT"
