"""Which store errors mean "unreachable for now" rather than "this data is wrong".

Writers that must not lose anything (the stream agents) retry the first kind until the store
is back, and let the second kind go to their error handling.
"""

from __future__ import annotations

import sys


def store_unavailable_errors() -> tuple[type[Exception], ...]:
    """Connection refused, reset or timed out (``OSError``, ``TimeoutError``); PostgreSQL's
    connection errors, shutting down or starting up (57xxx) and out of connections (53xxx);
    MongoDB's lost connections and server selection timeouts.

    Only the drivers already imported are asked: a backend not in use has not imported its
    driver, cannot raise its errors, and should not cost a process the import (PyMongo alone
    adds a second to the agents' start).
    """
    errors: list[type[Exception]] = [OSError]
    pg = sys.modules.get("asyncpg.exceptions")
    if pg is not None:
        errors += [
            pg.PostgresConnectionError,
            pg.OperatorInterventionError,
            pg.InsufficientResourcesError,
        ]
    mongo = sys.modules.get("pymongo.errors")
    if mongo is not None:
        errors.append(mongo.ConnectionFailure)
    return tuple(errors)
