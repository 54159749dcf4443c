#!/usr/bin/env bash
# `make test`: install what the tests need, start the infrastructure, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
UV=$(bash scripts/ensure-uv.sh)
export UV

echo "==> syncing the workspace from uv.lock"
"$UV" sync --all-packages --frozen

for hook in scripts/test.d/*.sh; do
  [ -e "$hook" ] || continue
  echo "==> $(basename "$hook")"
  bash "$hook"
done

echo "==> checking local services"
bash scripts/ensure-services.sh

echo "==> starting the Kafka-compatible broker (Tansu)"
PORT=$("$UV" run --no-sync python -c 'from iotctl.broker import free_port; print(free_port())')
LOG=$(mktemp -t tansu.XXXXXX.log)
BIN=$("$UV" run --no-sync python -c 'from iotctl.broker import tansu_binary; print(tansu_binary())')
RUST_LOG=warn "$BIN" broker --listener-url "tcp://127.0.0.1:$PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$PORT" --storage-engine memory://tansu/ >"$LOG" 2>&1 &
BROKER_PID=$!
trap 'kill $BROKER_PID 2>/dev/null || true; wait $BROKER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
export IOT_KAFKA_BOOTSTRAP="127.0.0.1:$PORT"

echo "==> lint (ruff)"
"$UV" run --no-sync ruff check .
"$UV" run --no-sync ruff format --check .

echo "==> type check (mypy --strict on src)"
SRCS=$(ls -d */src 2>/dev/null)
# shellcheck disable=SC2086
"$UV" run --no-sync mypy $SRCS

echo "==> tests"
TESTS=$(ls -d */tests 2>/dev/null)
# shellcheck disable=SC2086
"$UV" run --no-sync pytest $TESTS "$@"
