#!/usr/bin/env bash
# Fresh random secrets for `docker compose up` (.env) and the Kubernetes dev overlay
# (infra/k8s/overlays/dev/*.env), written only where the file does not exist yet. Nothing here
# is committed: compose and kustomize refuse to start without these files' values.
#   scripts/generate-env.sh [ROOT]     (ROOT: where to write, default this repository)
set -euo pipefail
ROOT=${1:-$(cd "$(dirname "$0")/.." && pwd)}
EXAMPLE="$(cd "$(dirname "$0")/.." && pwd)/.env.example"
python3 - "$ROOT" "$EXAMPLE" <<'PY'
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

root, example = Path(sys.argv[1]), Path(sys.argv[2])


def fresh() -> str:
    return secrets.token_urlsafe(24)  # URL-safe: several values sit inside connection URLs


def write(path: Path, text: str) -> None:
    if path.exists():
        print(f"kept {path} (exists)")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    print(f"wrote {path}")


# .env: every empty KEY= line of .env.example gets a random value.
lines = []
for line in example.read_text().splitlines():
    key, sep, value = line.partition("=")
    if sep and not line.startswith("#") and not value:
        line = f"{key}={fresh()}"
    lines.append(line)
write(root / ".env", "\n".join(lines) + "\n")

def self_signed(cert: Path, key: Path) -> None:
    """A self-signed server certificate for Mosquitto's TLS listener (10 years, P-256)."""
    if cert.exists() and key.exists():
        print(f"kept {cert} (exists)")
        return
    cert.parent.mkdir(parents=True, exist_ok=True)
    names = "DNS:localhost,DNS:mosquitto,IP:127.0.0.1"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "3650", "-subj", "/CN=mosquitto", "-addext",
         f"subjectAltName={names}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    key.chmod(0o600)
    print(f"wrote {cert} and {key} (self-signed; replace them with your own)")


if shutil.which("openssl"):
    self_signed(root / "infra" / "mosquitto" / "tls" / "tls.crt",
                root / "infra" / "mosquitto" / "tls" / "tls.key")
else:
    print("openssl not found: put Mosquitto's tls.crt and tls.key in infra/mosquitto/tls")

dev = root / "infra" / "k8s" / "overlays" / "dev"
if dev.is_dir():
    if shutil.which("openssl"):
        self_signed(dev / "mqtt-tls.crt", dev / "mqtt-tls.key")
    pg, mongo, rabbit, redis = fresh(), fresh(), fresh(), fresh()
    publisher, bridge = fresh(), fresh()  # the AMQP service accounts amqp-setup writes
    write(
        dev / "infra-credentials.env",
        f"postgres-password={pg}\nmongo-user=iot\nmongo-password={mongo}\n"
        f"rabbitmq-user=iot\nrabbitmq-password={rabbit}\nredis-password={redis}\n",
    )
    write(
        dev / "platform-secrets.env",
        f"IOT_DATABASE_URL=postgresql://postgres:{pg}@postgres:5432/iot\n"
        f"IOT_RABBITMQ_URL=amqp://iot:{rabbit}@rabbitmq:5672/\n"
        f"DEVICE_MANAGEMENT_RABBITMQ_URL=amqp://device-management:{publisher}@rabbitmq:5672/\n"
        f"DEVICE_MANAGEMENT_AMQP_PUBLISHER_PASSWORD={publisher}\n"
        f"DEVICE_MANAGEMENT_AMQP_BRIDGE_PASSWORD={bridge}\n"
        f"DEVICE_MANAGEMENT_RABBITMQ_ADMIN_PASSWORD={rabbit}\n"
        f"INGEST_BRIDGE_RABBITMQ_URL=amqp://ingest-bridge:{bridge}@rabbitmq:5672/\n"
        f"IOT_REDIS_URL=redis://:{redis}@redis:6379/0\n"
        f"MONITORING_STORE_URL=mongodb://iot:{mongo}@mongodb:27017/iot?authSource=admin\n"
        f"IOT_INTERNAL_TOKEN={fresh()}\n"
        "IOT_ADMIN_EMAIL=admin@example.com\n"
        f"IOT_ADMIN_PASSWORD={fresh()}\n"
        f"SIGNING_KEY_PASSPHRASE={fresh()}\n"
        f"DEVICE_MANAGEMENT_MQTT_ADMIN_PASSWORD={fresh()}\n"
        f"INGEST_BRIDGE_MQTT_PASSWORD={fresh()}\n",
    )
PY
