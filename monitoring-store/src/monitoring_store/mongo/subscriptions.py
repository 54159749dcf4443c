"""Alert subscriptions and their webhook deliveries on MongoDB."""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import ReturnDocument
from pymongo.errors import BulkWriteError

from monitoring_store.base import (
    Delivery,
    Subscription,
)
from monitoring_store.mongo.connection import (
    DELIVERIES,
    SUBSCRIPTIONS,
    Doc,
    MongoConnection,
    _only_duplicate_keys,
)


def _delivery_doc(d: Delivery) -> Doc:
    return {
        "_id": d.id,
        "subscription_id": d.subscription_id,
        "payload": d.payload,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at,
        "last_error": d.last_error,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    }


def _delivery_from(doc: Doc) -> Delivery:
    return Delivery(
        id=doc["_id"],
        subscription_id=doc["subscription_id"],
        payload=doc["payload"],
        status=doc["status"],
        attempts=doc["attempts"],
        next_attempt_at=doc["next_attempt_at"],
        last_error=doc["last_error"],
        created_at=doc["created_at"],
        updated_at=doc["updated_at"],
    )


def _subscription_from(doc: Doc) -> Subscription:
    return Subscription(
        id=doc["_id"],
        owner_id=doc["owner_id"],
        url=doc["url"],
        secret=doc["secret"],
        device_ids=doc.get("device_ids"),
        min_severity=doc["min_severity"],
        rule_types=doc.get("rule_types"),
        created_at=doc["created_at"],
    )


class MongoSubscriptions(MongoConnection):
    """Subscriptions and deliveries (``_id`` = id)."""

    async def create_subscription(self, sub: Subscription) -> None:
        await self._c(SUBSCRIPTIONS).insert_one(
            {
                "_id": sub.id,
                "owner_id": sub.owner_id,
                "url": sub.url,
                "secret": sub.secret,
                "device_ids": sub.device_ids,
                "min_severity": sub.min_severity,
                "rule_types": sub.rule_types,
                "created_at": sub.created_at,
            }
        )

    async def list_subscriptions(self, *, owner_id: str | None) -> list[Subscription]:
        query: Doc = {} if owner_id is None else {"owner_id": owner_id}
        docs = (
            await self._c(SUBSCRIPTIONS).find(query).sort([("created_at", 1), ("_id", 1)]).to_list()
        )
        return [_subscription_from(d) for d in docs]

    async def get_subscription(self, sub_id: str) -> Subscription | None:
        doc = await self._c(SUBSCRIPTIONS).find_one({"_id": sub_id})
        return _subscription_from(doc) if doc is not None else None

    async def delete_subscription(self, sub_id: str, *, owner_id: str | None) -> bool:
        query: Doc = {"_id": sub_id}
        if owner_id is not None:
            query["owner_id"] = owner_id
        res = await self._c(SUBSCRIPTIONS).delete_one(query)
        if res.deleted_count:
            await self._c(DELIVERIES).delete_many({"subscription_id": sub_id})
            return True
        return False

    async def enqueue_deliveries(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        sub_ids = {d.subscription_id for d in deliveries}
        existing = set(
            await self._c(SUBSCRIPTIONS).distinct("_id", {"_id": {"$in": list(sub_ids)}})
        )
        docs = [_delivery_doc(d) for d in deliveries if d.subscription_id in existing]
        if not docs:
            return
        try:
            await self._c(DELIVERIES).insert_many(docs, ordered=False)
        except BulkWriteError as err:  # ids already enqueued stay as they are
            if not _only_duplicate_keys(err):
                raise

    async def due_deliveries(
        self,
        *,
        now: float,
        limit: int,
        lease_seconds: float = 0.0,
        exclude_subscriptions: Sequence[str] = (),
    ) -> list[Delivery]:
        """Same semantics as :meth:`PostgresStore.due_deliveries` (claimed one by one)."""
        coll = self._c(DELIVERIES)
        query: Doc = {"status": "pending", "next_attempt_at": {"$lte": now}}
        if exclude_subscriptions:
            query["subscription_id"] = {"$nin": list(exclude_subscriptions)}
        if lease_seconds <= 0:
            docs = (
                await coll.find(query)
                .sort([("next_attempt_at", 1), ("created_at", 1)])
                .limit(limit)
                .to_list()
            )
            return [_delivery_from(d) for d in docs]
        claimed: list[Delivery] = []
        for _ in range(limit):
            doc = await coll.find_one_and_update(
                query,
                {"$set": {"next_attempt_at": now + lease_seconds}},
                sort=[("next_attempt_at", 1)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            claimed.append(_delivery_from(doc))
        return sorted(claimed, key=lambda d: d.created_at)

    async def update_delivery(self, delivery: Delivery) -> None:
        doc = _delivery_doc(delivery)
        doc.pop("_id")
        doc.pop("subscription_id")
        doc.pop("created_at")
        await self._c(DELIVERIES).update_one({"_id": delivery.id}, {"$set": doc})

    async def list_deliveries(
        self, *, subscription_id: str, status: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        query: Doc = {"subscription_id": subscription_id}
        if status is not None:
            query["status"] = status
        docs = (
            await self._c(DELIVERIES)
            .find(query)
            .sort([("created_at", -1), ("_id", 1)])
            .limit(limit)
            .to_list()
        )
        return [_delivery_from(d) for d in docs]
