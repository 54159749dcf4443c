"""Keeps credentials that clients put in URLs out of this process's log lines.

Browsers cannot set headers on a WebSocket handshake, so Socket.IO clients may send their
token as ``?token=``. uvicorn writes the path with its query string in the access line and in
the WebSocket "accepted"/"rejected" lines; a log shipper would then hold working bearer
tokens. The filter sits on uvicorn's own loggers, so it holds however the app is served and
whatever handlers an entry point configures.
"""

from __future__ import annotations

import logging
import re

_SECRET_PARAM = re.compile(r"([?&](?:token|access_token)=)[^&\s\"']*", re.IGNORECASE)
#: The loggers uvicorn writes request lines to.
UVICORN_LOGGERS = ("uvicorn.access", "uvicorn.error")


def redact(text: str) -> str:
    return _SECRET_PARAM.sub(r"\1[redacted]", text)


class RedactUrlTokens(logging.Filter):
    """Replaces the value of ``token=``/``access_token=`` query parameters in a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_url_tokens() -> None:
    """Install the filter on uvicorn's loggers (once)."""
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactUrlTokens) for f in logger.filters):
            logger.addFilter(RedactUrlTokens())
