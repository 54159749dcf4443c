"""The agents' device rules on MongoDB (kept across agent restarts)."""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError

from monitoring_store.base import (
    DeviceRules,
    dedupe_rules,
)
from monitoring_store.mongo.connection import (
    DEVICE_RULES,
    MongoConnection,
    _only_duplicate_keys,
)


class MongoDeviceRules(MongoConnection):
    """Device rules (``_id`` = device id, guarded by version)."""

    async def upsert_device_rules(self, rules: Sequence[DeviceRules]) -> None:
        latest = {r.device_id: r for r in dedupe_rules(rules)}
        if not latest:
            return
        ops = [
            UpdateOne(
                {"_id": r.device_id, "version": {"$lte": r.version}},
                {
                    "$set": {
                        "owner_id": r.owner_id,
                        "device_type": r.device_type,
                        "config": r.config,
                        "version": r.version,
                        "active": r.active,
                    }
                },
                upsert=True,
            )
            for r in latest.values()
        ]
        try:
            await self._c(DEVICE_RULES).bulk_write(ops, ordered=False)
        except BulkWriteError as err:  # a newer version is stored already
            if not _only_duplicate_keys(err):
                raise

    async def load_device_rules(self) -> list[DeviceRules]:
        docs = await self._c(DEVICE_RULES).find().sort("_id", ASCENDING).to_list()
        return [
            DeviceRules(
                device_id=d["_id"],
                owner_id=d.get("owner_id"),
                device_type=d.get("device_type"),
                config=d.get("config") or {},
                version=int(d["version"]),
                active=bool(d.get("active", True)),
            )
            for d in docs
        ]
