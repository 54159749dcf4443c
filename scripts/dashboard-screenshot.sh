#!/usr/bin/env bash
# The README's screenshots of the dashboard, taken by a browser test against the real API
# (monitoring-api/tests/test_dashboard.py::test_readme_screenshot: headless Chromium, a seeded
# greenhouse fleet): docs/dashboard.png at desktop width and docs/dashboard-phone.png at 375 px,
# or <path> and <path without .png>-phone.png.
#   scripts/dashboard-screenshot.sh [path.png]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-docs/dashboard.png}")
mkdir -p "$(dirname "$OUT")"
UV=$(bash scripts/ensure-uv.sh)
"$UV" sync --all-packages --frozen --quiet
bash scripts/test.d/20-dashboard.sh
bash scripts/ensure-services.sh >/dev/null
IOT_DASHBOARD_SCREENSHOT="$OUT" "$UV" run --no-sync pytest -q -p no:cacheprovider \
  "monitoring-api/tests/test_dashboard.py::test_readme_screenshot"
echo "screenshots: $OUT ${OUT%.png}-phone.png"
