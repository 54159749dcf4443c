"""The MongoDB store's client, shared by every resource module."""

from __future__ import annotations

import datetime as dt
from typing import Any

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

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _date(ts: float) -> dt.datetime:
    return _EPOCH + dt.timedelta(seconds=ts)


def _lit(value: Any) -> Any:
    """A constant inside an aggregation expression (a string could start with ``$``)."""
    return {"$literal": value}


def _only_duplicate_keys(err: BulkWriteError) -> bool:
    return all(e.get("code") == DUPLICATE_KEY for e in err.details.get("writeErrors", []))


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
        **client_options: Any,
    ) -> None:
        self._url = url
        self._migrate = migrate
        self._db_name = database or parse_uri(url).get("database") or DEFAULT_DATABASE
        # the same pool options as the PostgreSQL backend, so callers need not care which
        if min_pool is not None:
            client_options.setdefault("minPoolSize", min_pool)
        if max_pool is not None:
            client_options.setdefault("maxPoolSize", max_pool)
        self._client_options = client_options
        self._client: AsyncMongoClient[Doc] | None = None

    @property
    def db(self) -> AsyncDatabase[Doc]:
        if self._client is None:
            raise RuntimeError("MongoStore.start() has not been called")
        return self._client[self._db_name]

    def _c(self, name: str) -> AsyncCollection[Doc]:
        return self.db[name]

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def drop_database(self) -> None:
        """Drop this store's database (tests and benchmarks)."""
        if self._client is not None:
            await self._client.drop_database(self._db_name)
