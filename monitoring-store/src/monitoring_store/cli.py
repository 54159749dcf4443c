"""``monitoring-store migrate``: bring the store named by a URL to the newest schema.

The one command deployments run before the services that use the store start (compose's
``monitoring-store-migrate`` one-shot service, the Kubernetes init step, ``iotctl up``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import asyncpg
from pymongo.errors import PyMongoError
from sqlalchemy.exc import SQLAlchemyError

from monitoring_store import migrate, store_url_from_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="monitoring-store", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("migrate", help="bring the store's schema to the newest version")
    up.add_argument(
        "--url", help="store URL (default: MONITORING_STORE_URL, else local PostgreSQL)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    url = args.url or store_url_from_env()
    try:
        version = asyncio.run(migrate(url))
    except (
        OSError,
        RuntimeError,
        ValueError,
        PyMongoError,
        asyncpg.PostgresError,
        SQLAlchemyError,
    ) as exc:
        print(f"monitoring-store migrate: {exc}", file=sys.stderr)
        return 1
    print(f"monitoring store at schema version {version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
