#!/usr/bin/env bash
# The MongoDB-compatible server that the MongoDB store cases run against (SecantusDB, pinned in
# iotctl.sandbox), installed into its own venv outside the uv workspace. Idempotent: when it is
# installed this is one file check. The root conftest starts a private instance per session.
set -euo pipefail
cd "$(dirname "$0")/../.."
UV=${UV:-$(bash scripts/ensure-uv.sh)}
export UV
"$UV" run --no-sync python -c \
  'from iotctl.sandbox import mongodb_server_binary as b; print("mongodb server:", b())'
