#!/bin/bash
# The official image's RABBITMQ_DEFAULT_USER/PASS, as configuration (not the command line).
set -euo pipefail
conf=/etc/rabbitmq/conf.d/10-defaults.conf
{
  echo "loopback_users = none"
  echo "listeners.tcp.default = 5672"
  echo "management.tcp.port = 15672"
  if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
    echo "default_user = $RABBITMQ_DEFAULT_USER"
    echo "default_pass = ${RABBITMQ_DEFAULT_PASS:?RABBITMQ_DEFAULT_PASS is required}"
  fi
} >"$conf"
chmod 600 "$conf"
exec "$@"
