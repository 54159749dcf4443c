"""Entry point: ``ingest-bridge`` (or ``ingest-bridge serve``) runs the bridge."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from ingest_bridge.config import get_settings
from ingest_bridge.main import create_app
from iot_common.logging import setup_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ingest-bridge", description="MQTT, AMQP and HTTP telemetry into Kafka"
    )
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"])
    parser.parse_args(sys.argv[1:] if argv is None else argv)
    settings = get_settings()
    setup_logging("ingest-bridge", level=settings.log_level, json=settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
