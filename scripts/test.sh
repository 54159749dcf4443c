#!/usr/bin/env bash
# `make test`: install what the tests need, start the infrastructure, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
UV=$(bash scripts/ensure-uv.sh)
export UV

echo "==> syncing the workspace from uv.lock"
# Bytecode is compiled once here: with PYTHONDONTWRITEBYTECODE set (as on the CI machine)
# every Python process the tests start would otherwise compile all it imports again, about
# three times the CPU of a service start (device-management: 9.3 s → 3.2 s of CPU), enough
# for a busy machine to miss health deadlines.
"$UV" sync --all-packages --frozen --compile-bytecode
"$UV" run --no-sync python -m compileall -q $(ls -d */src) >/dev/null

for hook in scripts/test.d/*.sh; do
  [ -e "$hook" ] || continue
  echo "==> $(basename "$hook")"
  bash "$hook"
done

echo "==> checking local services"
bash scripts/ensure-services.sh

echo "==> starting the Kafka-compatible broker (Tansu)"
PORT=$("$UV" run --no-sync python -c 'from iotctl.broker import free_port; print(free_port())')
PY=$("$UV" run --no-sync python -c 'import sys; print(sys.executable)')
# iotctl.testinfra runs iotctl.broker.TansuBroker (the class the tests and benchmarks use) until
# it is told to stop; it stops the broker with it.
"$PY" -m iotctl.testinfra tansu "$PORT" >/dev/null &
BROKER_PID=$!
trap 'kill $BROKER_PID 2>/dev/null || true; wait $BROKER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
export IOT_KAFKA_BOOTSTRAP="127.0.0.1:$PORT"

echo "==> lint (ruff)"
"$UV" run --no-sync ruff check .
"$UV" run --no-sync ruff format --check .

echo "==> type check (mypy --strict on src), beside the tests: its result is printed after theirs"
SRCS=$(ls -d */src 2>/dev/null)
MYPY_LOG=$(mktemp)
# shellcheck disable=SC2086
"$UV" run --no-sync mypy $SRCS >"$MYPY_LOG" 2>&1 &
MYPY_PID=$!
trap 'kill $BROKER_PID $MYPY_PID 2>/dev/null || true; wait $BROKER_PID 2>/dev/null || true; rm -f "$MYPY_LOG"' EXIT

echo "==> tests (with coverage of every */src: coverage.xml, a total per package at the end)"
TESTS=$(ls -d */tests 2>/dev/null)
COV=()
# Every package's src is measured (a new package needs no edit here); tests are not, nor are
# the services the tests start as subprocesses. Settings: [tool.coverage] in pyproject.toml.
# The tracer slows the tests' in-process Python about 1.6-2x; IOT_TEST_COVERAGE=0 skips it.
if [ "${IOT_TEST_COVERAGE:-1}" != 0 ]; then
  for src in $SRCS; do COV+=("--cov=$src"); done
  COV+=(--cov-report=xml:coverage.xml)
fi
# Two workers (pytest-xdist; IOT_TEST_WORKERS=0 runs in this process): whole modules each, the
# modules that run service stacks one after another on one worker (STACK_MODULES in conftest.py).
XDIST=()
if [ "${IOT_TEST_WORKERS:-2}" != 0 ]; then
  XDIST=(-n "${IOT_TEST_WORKERS:-2}" --dist loadfile)
fi
PYTEST_RC=0
# shellcheck disable=SC2086
"$UV" run --no-sync pytest $TESTS "${XDIST[@]}" "${COV[@]}" "$@" || PYTEST_RC=$?

echo "==> type check (mypy --strict on src)"
MYPY_RC=0
wait "$MYPY_PID" || MYPY_RC=$?
cat "$MYPY_LOG"
[ "$PYTEST_RC" = 0 ] || exit "$PYTEST_RC"
exit "$MYPY_RC"
