"""The newest value of each device × metric on MongoDB (``latest_values``).

One document per device × metric, ``_id`` = ``"{metric}/{device}"`` (a metric name has no
``/``, so the key is unambiguous): the fleet table's order by one metric's last value asks for
exactly the keys of the devices it lists, one ``_id`` index probe each, whatever the devices
ever sent. Written by :func:`record_latest` from every window write (windows are written with
raw samples off too, and there are far fewer of them than samples).
"""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

from iot_common.events import WindowStats
from monitoring_store.base import Sample
from monitoring_store.mongo.connection import LATEST, WRITE_CHUNK, Doc, MongoConnection


def latest_key(device_id: str, metric: str) -> str:
    return f"{metric}/{device_id}"


def newest_readings(windows: Sequence[WindowStats]) -> dict[tuple[str, str], tuple[float, float]]:
    """The newest reading (``last_ts``, ``last``) each device × metric's windows saw."""
    newest: dict[tuple[str, str], tuple[float, float]] = {}
    for w in windows:
        if w.count <= 0:
            continue
        k = (w.device_id, w.metric)
        seen = newest.get(k)
        if seen is None or w.last_ts > seen[0]:
            newest[k] = (w.last_ts, w.last)
    return newest


async def record_latest(
    coll: AsyncCollection[Doc], newest: dict[tuple[str, str], tuple[float, float]]
) -> None:
    """Move each device × metric's latest value forward to ``(ts, value)``; a stored newer one
    stays (a replayed or corrected older window changes nothing).

    ``$max`` of the embedded ``{ts, v}`` on the bare ``_id`` (one probe on every server): BSON
    compares embedded documents field by field in order, so the newer ``ts`` wins (on a tie
    the larger value, the same reading in practice). On the emulator it took 0.72× the time of
    the conditional pipeline update it replaces (1.80 against 2.50 s for 2,000 new keys).
    """
    updates = [
        UpdateOne(
            {"_id": latest_key(d, m)},
            {"$max": {"at": {"ts": t, "v": v}}, "$setOnInsert": {"d": d, "k": m}},
            upsert=True,
        )
        for (d, m), (t, v) in sorted(newest.items())
    ]
    for i in range(0, len(updates), WRITE_CHUNK):
        await coll.bulk_write(updates[i : i + WRITE_CHUNK], ordered=False)


def _sample(doc: Doc) -> Sample:
    # No seq: a window does not carry its last reading's.
    at = doc["at"]
    return Sample(doc["d"], doc["k"], float(at["ts"]), float(at["v"]))


class MongoLatest(MongoConnection):
    """Latest values: the ``latest_values`` collection."""

    async def latest_values(self, *, device_ids: Sequence[str]) -> list[Sample]:
        if not device_ids:
            return []
        cursor = self._c(LATEST).find({"d": {"$in": sorted(set(device_ids))}})
        docs = await cursor.to_list()
        return sorted((_sample(d) for d in docs), key=lambda s: (s.device_id, s.metric))

    async def rank_by_latest(
        self,
        *,
        metric: str,
        device_ids: Sequence[str],
        descending: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[str]:
        """Same order as :meth:`PostgresStore.rank_by_latest`: the values of the devices named
        (one ``_id`` probe each), sorted here (as many as devices named)."""
        ids = list(dict.fromkeys(device_ids))
        if not ids or limit <= 0:
            return []
        cursor = self._c(LATEST).find(
            {"_id": {"$in": [latest_key(d, metric) for d in ids]}}, {"_id": 0, "d": 1, "at.v": 1}
        )
        value = {doc["d"]: float(doc["at"]["v"]) for doc in await cursor.to_list()}
        sign = -1.0 if descending else 1.0
        position = {d: n for n, d in enumerate(ids)}
        with_value = sorted(
            (d for d in ids if d in value), key=lambda d: (sign * value[d], position[d])
        )
        ranked = with_value + [d for d in ids if d not in value]
        return ranked[offset : offset + limit]
