"""``stream-agents``: run the Faust worker (``stream-agents`` alone or ``serve``), or pass any
Faust CLI command through (``stream-agents worker -l info``, ``stream-agents agents``)."""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading

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


log = logging.getLogger(__name__)

#: The exit status of a worker whose stop did not finish by its deadline (``EX_SOFTWARE``).
EXIT_STOP_DEADLINE = 70


class StopDeadline:
    """Ends the process ``seconds`` after its stop began, if the stop has not ended it by then.

    A stop can wait far longer than anyone waits for it: Faust and mode give each service up
    to 60 s, aiokafka flushes to a broker that is gone for its request timeout, and a stuck
    wait has no bound at all. Ending the process there is what a SIGKILL would do, only
    sooner and logged: nothing is committed on the way out, so the offsets still cover only
    what the store holds, and the next worker replays the rest.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True  # a stop that finishes exits without waiting for it
            self._timer.start()

    def _expire(self) -> None:
        log.critical(
            "the worker did not stop within %.0f s (AGENTS_SHUTDOWN_TIMEOUT): exiting now; "
            "nothing more is committed, the next worker replays from the committed offsets",
            self.seconds,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_STOP_DEADLINE)


def main() -> None:
    # The hot path allocates millions of short-lived objects per second (decoded records);
    # with the default thresholds the cyclic GC runs constantly and halves throughput.
    gc.set_threshold(200_000, 50, 1_000)
    settings = get_settings()
    setup_logging("stream-agents", level=settings.log_level, json=settings.log_json)
    app = create_app(settings)
    app.stopping.append(StopDeadline(settings.shutdown_timeout).arm)
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
