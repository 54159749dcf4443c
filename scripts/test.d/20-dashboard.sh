#!/usr/bin/env bash
# The dashboard: its test prerequisite (Debian's chromium, driven by Playwright) and the built
# front end. `iotctl up` runs it with `build` (the front end only) before it starts
# monitoring-api, so `make run` serves a current dashboard on a fresh clone too.
# Idempotent: each step is skipped when its result is already in place and up to date.
# The last line of output says what was done.
set -euo pipefail
cd "$(dirname "$0")/../.."
FRONTEND=monitoring-api/frontend
OUT=monitoring-api/src/monitoring_api/static/dashboard
STEP=${1:-all}

if [ "$STEP" != build ] && [ ! -x /usr/bin/chromium ]; then
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

if ! command -v npm >/dev/null; then
  echo "dashboard not built: npm is not installed (apt-get install nodejs npm)" >&2
  exit 1
fi

cd "$FRONTEND"
LOG=$(mktemp -t dashboard-build.XXXXXX.log)
# Run a step with its output in $LOG; on failure, one line with the first line that says why.
step() {
  local what=$1
  shift
  # No colour: an escape code in front of a line would defeat the filters below.
  if ! NO_COLOR=1 FORCE_COLOR=0 "$@" >"$LOG" 2>&1; then
    local why
    why=$(sed -E 's/\x1b\[[0-9;]*[A-Za-z]//g' "$LOG" \
      | grep -vE '^(npm (error|ERR!) *$|.*Build failed in|error during build:)' \
      | grep -m1 -iE 'error|failed|cannot|not found' || tail -n1 "$LOG")
    echo "$what failed: ${why#npm error } (full output in $LOG)" >&2
    exit 1
  fi
}

# Reinstall only when the lock file changed since the last install.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  if [ -f package-lock.json ]; then
    step "dashboard dependencies (npm ci)" npm ci --no-audit --no-fund --loglevel=error
  else
    step "dashboard dependencies (npm install)" npm install --no-audit --no-fund --loglevel=error
  fi
fi

# Rebuild only when a source file is newer than the last build (or there is none).
STAMP="../src/monitoring_api/static/dashboard/index.html"
SOURCES=(src index.html package.json package-lock.json vite.config.js)
[ -d public ] && SOURCES+=(public)
if [ ! -f "$STAMP" ] || [ -n "$(find "${SOURCES[@]}" -newer "$STAMP" -print -quit 2>/dev/null)" ]; then
  started=$SECONDS
  step "dashboard build (npm run build)" npm run build
  echo "dashboard built in $OUT ($((SECONDS - started)) s)"
else
  echo "dashboard up to date in $OUT"
fi
rm -f "$LOG"
