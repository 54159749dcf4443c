"""``signing`` (or ``signing serve``) runs the service; ``signing migrate`` applies migrations."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from iot_common.logging import setup_logging
from signing.config import get_settings

log = logging.getLogger("signing")


def _serve(host: str | None, port: int | None) -> int:
    import uvicorn

    from signing.migrations import check_database

    settings = get_settings()
    asyncio.run(check_database(settings))
    uvicorn.run(
        "signing.main:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
    )
    return 0


def _migrate() -> int:
    from signing.migrations import bootstrap_admin, check_database, upgrade_head

    settings = get_settings()
    asyncio.run(check_database(settings, migrated=False))
    upgrade_head(settings.database_url)
    asyncio.run(bootstrap_admin(settings))
    log.info("database at head; bootstrap admin %s present", settings.bootstrap_admin_email)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="signing", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the HTTP service (the default)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    sub.add_parser("migrate", help="apply database migrations and create the bootstrap admin")
    args = parser.parse_args(argv)

    settings = get_settings()
    setup_logging("signing", level=settings.log_level, json=settings.log_json)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        if args.command == "migrate":
            return _migrate()
        return _serve(getattr(args, "host", None), getattr(args, "port", None))
    except Exception as exc:
        # One clear line for the operator, not a traceback (run with log level DEBUG for one).
        log.error("signing %s failed: %s", args.command or "serve", exc)
        log.debug("details", exc_info=exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
