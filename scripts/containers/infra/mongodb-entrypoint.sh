#!/bin/bash
# First start: serve without auth on loopback only, create the root user, stop; then serve with
# SCRAM required on every interface.
set -euo pipefail
S=/opt/secantus/bin
args=(--storage-path /data/db --cache-size "${SECANTUS_CACHE_SIZE:-256M}" --log-level WARNING)
if [ ! -e /data/db/.iot-initialised ] && [ -n "${MONGO_INITDB_ROOT_USERNAME:-}" ]; then
  "$S/secantusd-py" --host 127.0.0.1 --port 27018 "${args[@]}" &
  pid=$!
  "$S/python" - <<'PY'
import os, time
from pymongo import MongoClient
client = MongoClient("mongodb://127.0.0.1:27018", serverSelectionTimeoutMS=60000)
for _ in range(600):
    try:
        client.admin.command("ping")
        break
    except Exception:
        time.sleep(0.1)
client.admin.command("createUser", os.environ["MONGO_INITDB_ROOT_USERNAME"],
                     pwd=os.environ["MONGO_INITDB_ROOT_PASSWORD"], roles=["root"])
PY
  kill "$pid"
  wait "$pid" || true
  touch /data/db/.iot-initialised
fi
# --standalone: as a replica set it would advertise its member as 0.0.0.0:27017, which clients
# on other containers cannot reach (the store needs no sessions or change streams).
exec "$S/secantusd-py" --host 0.0.0.0 --port 27017 --auth --standalone "${args[@]}"
