"""``monitoring-api [serve]``: run the monitoring API with uvicorn."""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from iot_common.logging import setup_logging
from monitoring_api.config import get_settings
from monitoring_api.main import create_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="monitoring-api", description=__doc__)
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument(
        "--workers",
        type=int,
        help="processes sharing the port, each a full instance with its own Kafka reader "
        "(WebSocket clients only: long-polling needs one process per address or sticky sessions)",
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    setup_logging(service="monitoring-api", level=settings.log_level, json=settings.log_json)
    if args.command == "migrate":
        # The store creates its tables on start; nothing else to migrate.
        return
    workers = args.workers or settings.workers
    common: dict[str, Any] = {
        "host": args.host or settings.host,
        "port": args.port or settings.port,
        "log_config": None,
        # The app resolves forwarded addresses itself, from its own trusted proxies only
        # (monitoring_api.proxies); uvicorn's would trust FORWARDED_ALLOW_IPS instead.
        "proxy_headers": False,
        "ws": "websockets-sansio",
    }
    if workers > 1:
        # Each worker builds its own app (and so its own instance id and consumer).
        uvicorn.run("monitoring_api.main:create_app", factory=True, workers=workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)


if __name__ == "__main__":
    main()
