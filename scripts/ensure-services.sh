#!/usr/bin/env bash
# Make sure the machine's PostgreSQL, Redis, RabbitMQ and Mosquitto are up; start any that are down.
set -u

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name port seconds
  for _ in $(seq 1 $(( $3 * 5 ))); do up "$2" && return 0; sleep 0.2; done
  echo "ensure-services: $1 did not come up on port $2" >&2; return 1
}

start() { # name port command...
  local name=$1 port=$2; shift 2
  if up "$port"; then return 0; fi
  echo "ensure-services: starting $name"
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "ensure-services: $name is not installed ($1 not found); install it with apt-get" >&2
    return 1
  fi
  "$@" >/dev/null 2>&1 || true
  wait_for "$name" "$port" 60
}

rc=0
start PostgreSQL 5432 pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql 2>/dev/null | head -n1)" main start || rc=1
start Redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || rc=1
start RabbitMQ 5672 rabbitmq-server -detached || rc=1
# Device accounts on AMQP are kept through RabbitMQ's own management HTTP API (its plugin).
if up 5672 && ! up 15672; then
  echo "ensure-services: enabling RabbitMQ's management plugin"
  rabbitmq-plugins enable rabbitmq_management >/dev/null 2>&1 && wait_for "RabbitMQ management" 15672 60 || rc=1
fi
start Mosquitto 1883 mosquitto -d -c /etc/mosquitto/mosquitto.conf || rc=1
exit $rc
