"""``signing`` (or ``signing serve``) runs the service; ``signing migrate`` applies migrations;
``signing rotate-key`` starts a new signing key without logging anyone out."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pydantic import ValidationError

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
    upgrade_head(settings.database_url.get_secret_value())
    asyncio.run(bootstrap_admin(settings))
    log.info("database at head; bootstrap admin %s present", settings.bootstrap_admin_email)
    return 0


def _rotate_key(revoke_previous: bool) -> int:
    from signing.migrations import check_database, rotate_key

    settings = get_settings()
    asyncio.run(check_database(settings))
    done = asyncio.run(rotate_key(settings, revoke_previous=revoke_previous))
    if revoke_previous:
        log.warning(
            "signing key %s signs from now; every earlier key is withdrawn, so tokens they "
            "signed are refused within a JWKS refresh (everyone signs in again)",
            done.new_kid,
        )
    else:
        log.info(
            "signing key %s is published now and signs from %s; the previous key %s keeps "
            "verifying its tokens until %s",
            done.new_kid,
            done.signs_from.isoformat(timespec="seconds"),
            done.previous_kid,
            done.previous_verifies_until.isoformat(timespec="seconds")
            if done.previous_verifies_until
            else "-",
        )
    return 0


def _reasons(exc: ValidationError) -> str:
    return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="signing", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the HTTP service (the default)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    sub.add_parser("migrate", help="apply database migrations and create the bootstrap admin")
    rotate = sub.add_parser(
        "rotate-key",
        help="sign with a new key; tokens of the previous key stay valid until they expire",
    )
    rotate.add_argument(
        "--revoke-previous",
        action="store_true",
        help="the previous key leaked: withdraw it at once (its tokens stop working)",
    )
    args = parser.parse_args(argv)

    try:
        settings = get_settings()
    except ValidationError as exc:
        # Refused settings (a development default outside development): one clear line.
        setup_logging("signing")
        log.error("signing %s refused its settings: %s", args.command or "serve", _reasons(exc))
        return 1
    setup_logging("signing", level=settings.log_level, json=settings.log_json)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        if args.command == "migrate":
            return _migrate()
        if args.command == "rotate-key":
            return _rotate_key(args.revoke_previous)
        return _serve(getattr(args, "host", None), getattr(args, "port", None))
    except Exception as exc:
        # One clear line for the operator, not a traceback (run with log level DEBUG for one).
        log.error("signing %s failed: %s", args.command or "serve", exc)
        log.debug("details", exc_info=exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
