"""A stream-agents worker whose processing-error callback refuses the first record that breaks
decoding (the stage raises, as a callback returning False asks) and dead-letters it after.

Run as a script by test_errors_e2e: the refusal ends the batch loop, Faust's supervisor
restarts the agent in the same process, and the record is met again.
"""

from __future__ import annotations

import functools
import logging

from iot_common.stream_errors import RecordRef, default_on_processing_error
from stream_agents import __main__ as agents_main
from stream_agents.app import create_app

refused: list[RecordRef] = []


def refuse_once(exc: Exception, record: RecordRef, logger: logging.Logger) -> bool:
    if not refused:
        refused.append(record)
        logger.error("refusing %s once: %s", record.where(), exc)
        return False
    return default_on_processing_error(exc, record, logger)


if __name__ == "__main__":
    agents_main.create_app = functools.partial(create_app, on_processing_error=refuse_once)
    agents_main.main()
