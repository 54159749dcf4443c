"""The MongoDB store's client, shared by every resource module."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pymongo
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError
from pymongo.uri_parser import parse_uri

Doc = dict[str, Any]


DEFAULT_DATABASE = "iot_monitoring"


WRITE_CHUNK = 50_000


DUPLICATE_KEY = 11000


#: Collection names.
#: Raw samples (time-series) and alerts: the names of the platform design (migration 2).
SAMPLES = "monitoring_data"
WINDOWS = "windows"
ALERTS = "device_alerts"
DEVICE_RULES = "device_rules"
SUBSCRIPTIONS = "subscriptions"
DELIVERIES = "deliveries"
#: Refused messages per device (migration 3).
DEADLETTERS = "deadletters"
#: The newest reading the windows saw, per device × metric (migration 4).
LATEST = "latest_values"

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _date(ts: float) -> dt.datetime:
    return _EPOCH + dt.timedelta(seconds=ts)


def _lit(value: Any) -> Any:
    """A constant inside an aggregation expression (a string could start with ``$``)."""
    return {"$literal": value}


def _only_duplicate_keys(err: BulkWriteError) -> bool:
    return all(e.get("code") == DUPLICATE_KEY for e in err.details.get("writeErrors", []))


def durable_writes(url: str, client_options: dict[str, Any]) -> dict[str, Any]:
    """``client_options`` with journaled writes (``j: true``) unless ``url`` or the caller
    chose a write concern.

    The agents commit Kafka offsets once the store acknowledged what they cover, so an
    acknowledgement must mean "on disk". With the default (``w: 1``, no ``j``) a standalone
    MongoDB and the emulator acknowledge a write before its journal record is flushed, and a
    server killed then loses it after the offsets past it were committed: of 2,000 sample
    documents acknowledged in batches of 50, 350 to 450 (the last few hundred milliseconds)
    were gone after a SIGKILL of the emulator, none with ``j: true``. Real MongoDB loses up to
    its journal commit interval (100 ms) the same way.
    """
    chosen = {k.lower() for k in (*parse_uri(url).get("options", {}), *client_options)}
    if chosen & {"w", "journal", "j"}:
        return client_options
    return {**client_options, "journal": True}


class MongoConnection:
    """An ``AsyncMongoClient``, opened by :meth:`MongoStore.start`."""

    def __init__(
        self,
        url: str,
        *,
        database: str | None = None,
        min_pool: int | None = None,
        max_pool: int | None = None,
        migrate: bool = True,
        close_timeout: float = 2.0,
        **client_options: Any,
    ) -> None:
        self._url = url
        self._close_timeout = close_timeout
        self._migrate = migrate
        self._db_name = database or parse_uri(url).get("database") or DEFAULT_DATABASE
        # the same pool options as the PostgreSQL backend, so callers need not care which
        if min_pool is not None:
            client_options.setdefault("minPoolSize", min_pool)
        if max_pool is not None:
            client_options.setdefault("maxPoolSize", max_pool)
        self._client_options = durable_writes(url, client_options)
        self._client: AsyncMongoClient[Doc] | None = None

    @property
    def db(self) -> AsyncDatabase[Doc]:
        if self._client is None:
            raise RuntimeError("MongoStore.start() has not been called")
        return self._client[self._db_name]

    def _c(self, name: str) -> AsyncCollection[Doc]:
        return self.db[name]

    async def close(self) -> None:
        """Close the client, within ``close_timeout`` seconds even when the server does not answer.

        PyMongo's ``close`` first sends ``endSessions``, a courtesy (the server expires idle
        sessions by itself), but to send it waits up to the server selection timeout (30 s)
        for a server that answers: a service stopped while its store was down or overloaded took
        30 s to exit, and monitoring-api overran its 5 s shutdown in a loaded CI run. The
        deadline (PyMongo's own ``pymongo.timeout``) bounds that wait; the pools and monitors
        are closed either way.
        """
        if self._client is not None:
            client, self._client = self._client, None
            with pymongo.timeout(self._close_timeout):
                await client.close()

    async def drop_database(self) -> None:
        """Drop this store's database (tests and benchmarks)."""
        if self._client is not None:
            await self._client.drop_database(self._db_name)
