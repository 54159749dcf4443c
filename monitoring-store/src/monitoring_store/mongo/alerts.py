"""Alerts on MongoDB: lifecycle-preserving pipeline upserts, queries, user transitions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pymongo import ReturnDocument, UpdateOne

from iot_common.events import STATUS_RANK, Alert, severities_at_least
from monitoring_store.base import (
    AlertTransitionError,
)
from monitoring_store.mongo.connection import (
    ALERTS,
    Doc,
    MongoConnection,
    _lit,
)

_ALERT_FIELDS = tuple(Alert.__struct_fields__)


def _status_rank(expr: Any) -> Doc:
    """The lifecycle rank of a status expression, from iot_common.events.STATUS_RANK."""
    ranks = sorted(STATUS_RANK.items(), key=lambda kv: kv[1])
    return {
        "$switch": {
            "branches": [{"case": {"$eq": [expr, str(s)]}, "then": r} for s, r in ranks[:-1]],
            "default": ranks[-1][1],
        }
    }


def _alert_from(doc: Doc) -> Alert:
    fields: dict[str, Any] = {f: doc.get(f) for f in _ALERT_FIELDS}
    return Alert(**fields)


class MongoAlerts(MongoConnection):
    """Alerts (``_id`` = alert id)."""

    async def upsert_alerts(self, alerts: Sequence[Alert]) -> None:
        if not alerts:
            return
        ops = [self._alert_upsert(a) for a in sorted(alerts, key=lambda a: a.updated_at)]
        await self._c(ALERTS).bulk_write(ops, ordered=True)

    @staticmethod
    def _alert_upsert(a: Alert) -> UpdateOne:
        """Same rules as PostgreSQL: status only moves forward, ack/clear facts kept once set,
        descriptive fields follow the newer update."""
        newer = {"$gte": [_lit(a.updated_at), {"$ifNull": ["$updated_at", -math.inf]}]}

        def if_newer(field: str, value: Any) -> Doc:
            return {"$cond": [newer, _lit(value), f"${field}"]}

        def keep_first(field: str, value: Any) -> Doc:
            return {"$ifNull": [f"${field}", _lit(value)]}

        def prefer_new(field: str, value: Any) -> Any:
            return _lit(value) if value is not None else f"${field}"

        current_status = {"$ifNull": ["$status", "active"]}
        stage = {
            "alert_id": _lit(a.alert_id),
            "device_id": _lit(a.device_id),
            "rule_id": _lit(a.rule_id),
            "rule_type": _lit(a.rule_type),
            "started_at": _lit(a.started_at),
            "status": {
                "$cond": [
                    {"$gte": [_status_rank(_lit(a.status)), _status_rank(current_status)]},
                    _lit(a.status),
                    current_status,
                ]
            },
            "severity": if_newer("severity", a.severity),
            "message": if_newer("message", a.message),
            "metric": prefer_new("metric", a.metric),
            "value": (
                {"$cond": [newer, _lit(a.value), "$value"]} if a.value is not None else "$value"
            ),
            "threshold": prefer_new("threshold", a.threshold),
            "acknowledged_at": keep_first("acknowledged_at", a.acknowledged_at),
            "acknowledged_by": keep_first("acknowledged_by", a.acknowledged_by),
            "cleared_at": keep_first("cleared_at", a.cleared_at),
            "owner_id": prefer_new("owner_id", a.owner_id),
            "updated_at": {"$max": [_lit(a.updated_at), "$updated_at"]},
        }
        return UpdateOne({"_id": a.alert_id}, [{"$set": stage}], upsert=True)

    async def query_alerts(
        self,
        *,
        device_ids: Sequence[str] | None = None,
        status: str | None = None,
        min_severity: str | None = None,
        start: float | None = None,
        end: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Alert]:
        if device_ids is not None and not device_ids:
            return []
        query: Doc = {}
        if device_ids is not None:
            query["device_id"] = {"$in": list(device_ids)}
        if status is not None:
            query["status"] = status
        if min_severity is not None:
            query["severity"] = {"$in": severities_at_least(min_severity)}
        started: Doc = {}
        if start is not None:
            started["$gte"] = start
        if end is not None:
            started["$lt"] = end
        if started:
            query["started_at"] = started
        docs = (
            await self._c(ALERTS)
            .find(query)
            .sort([("started_at", -1), ("_id", 1)])
            .skip(offset)
            .limit(limit)
            .to_list()
        )
        return [_alert_from(d) for d in docs]

    async def get_alert(self, alert_id: str) -> Alert | None:
        doc = await self._c(ALERTS).find_one({"_id": alert_id})
        return _alert_from(doc) if doc is not None else None

    async def transition_alert(
        self, alert_id: str, *, status: str, by: str | None, at: float
    ) -> Alert | None:
        """Same rules as :meth:`PostgresStore.transition_alert`."""
        if status not in ("acknowledged", "cleared"):
            raise ValueError(f"cannot transition an alert to {status!r}")
        alerts = self._c(ALERTS)
        while True:
            doc = await alerts.find_one({"_id": alert_id})
            if doc is None:
                return None
            current = _alert_from(doc)
            if current.status == status:
                return current
            if STATUS_RANK[status] < STATUS_RANK.get(current.status, 0):
                raise AlertTransitionError(current, status)
            changes: Doc = {"status": status, "updated_at": max(at, current.updated_at)}
            if status == "acknowledged":
                changes |= {"acknowledged_at": at, "acknowledged_by": by}
            else:
                changes["cleared_at"] = at
            # Compare-and-set on the status we checked; another writer in between → retry.
            new = await alerts.find_one_and_update(
                {"_id": alert_id, "status": current.status},
                {"$set": changes},
                return_document=ReturnDocument.AFTER,
            )
            if new is not None:
                return _alert_from(new)
