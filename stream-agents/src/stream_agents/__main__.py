"""``stream-agents``: run the Faust worker (``stream-agents`` alone or ``serve``), or pass any
Faust CLI command through (``stream-agents worker -l info``, ``stream-agents agents``)."""

from __future__ import annotations

import gc
import sys

from iot_common.logging import setup_logging
from stream_agents.app import create_app
from stream_agents.config import get_settings

_FAUST_LEVELS = {
    "critical": "crit",
    "crit": "crit",
    "error": "error",
    "warning": "warn",
    "warn": "warn",
    "info": "info",
    "debug": "debug",
}


def main() -> None:
    # The hot path allocates millions of short-lived objects per second (decoded records);
    # with the default thresholds the cyclic GC runs constantly and halves throughput.
    gc.set_threshold(200_000, 50, 1_000)
    settings = get_settings()
    setup_logging("stream-agents", level=settings.log_level, json=settings.log_json)
    app = create_app(settings)
    argv = sys.argv[1:]
    if not argv or argv[0] == "serve":
        argv = [
            "worker",
            "--web-port",
            str(settings.web_port),
            "--web-bind",
            settings.web_host,
            "--loglevel",
            _FAUST_LEVELS.get(settings.log_level.lower(), "info"),
            *argv[1:],
        ]
    sys.argv = [sys.argv[0], *argv]
    app.main()


if __name__ == "__main__":
    main()
