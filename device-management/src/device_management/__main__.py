"""``device-management [serve|migrate]``: run the service, or apply its database migrations."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from device_management.config import get_settings
from device_management.main import SERVICE, create_app
from device_management.migrations import upgrade_sync
from iot_common.logging import setup_logging

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="device-management", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the HTTP service (default)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    migrate = sub.add_parser("migrate", help="apply Alembic migrations (upgrade)")
    migrate.add_argument("revision", nargs="?", default="head")
    args = parser.parse_args(argv)

    settings = get_settings()
    setup_logging(SERVICE, level=settings.log_level, json=settings.log_json)
    if args.command == "migrate":
        upgrade_sync(settings.database_url.get_secret_value(), args.revision)
        log.info("database migrated to %s", args.revision)
        return
    uvicorn.run(
        create_app(settings),
        host=getattr(args, "host", None) or settings.host,
        port=getattr(args, "port", None) or settings.port,
        log_config=None,
        access_log=settings.access_log,
    )


if __name__ == "__main__":
    main()
