"""The MongoDB store: one class over the resource modules."""

from __future__ import annotations

from pymongo import AsyncMongoClient

from monitoring_store.mongo.alerts import MongoAlerts
from monitoring_store.mongo.deadletters import MongoDeadLetters
from monitoring_store.mongo.latest import MongoLatest
from monitoring_store.mongo.migrations import HEAD, StoreNotMigrated, migrate, schema_version
from monitoring_store.mongo.rules import MongoDeviceRules
from monitoring_store.mongo.samples import MongoSamples
from monitoring_store.mongo.subscriptions import MongoSubscriptions
from monitoring_store.mongo.windows import MongoWindows


class MongoStore(
    MongoWindows,
    MongoSamples,
    MongoLatest,
    MongoAlerts,
    MongoDeviceRules,
    MongoSubscriptions,
    MongoDeadLetters,
):
    """The monitoring store on MongoDB (see the package docstring for the layout)."""

    async def start(self) -> None:
        """Connect; bring the schema to the newest migration first when it is behind
        (``migrate=False``: refuse instead, for deployments whose one-shot
        ``monitoring-store migrate`` job owns upgrades)."""
        if self._client is not None:
            return
        self._client = AsyncMongoClient(self._url, tz_aware=True, **self._client_options)
        await self._client.aconnect()
        version = await schema_version(self.db)
        if version < HEAD:
            if not self._migrate:
                await self.close()
                raise StoreNotMigrated(
                    f"the monitoring store's schema is at version {version}, this code needs "
                    f"{HEAD}: run `monitoring-store migrate` first"
                )
            await migrate(self.db)
        elif version > HEAD:
            await self.close()
            raise StoreNotMigrated(
                f"the monitoring store's schema is at version {version}, newer than this "
                f"code's {HEAD}: upgrade the code"
            )

    async def schema_version(self) -> str:
        return str(await schema_version(self.db))
