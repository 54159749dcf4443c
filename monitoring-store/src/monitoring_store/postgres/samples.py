"""Raw samples on PostgreSQL: one wide row per reading."""

# SQL text here is assembled only from module constants; every value goes as a $n parameter.
# ruff: noqa: S608

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import numpy as np
import numpy.typing as npt

from monitoring_store.base import (
    Sample,
    SampleBatch,
)
from monitoring_store.postgres.connection import WRITE_CHUNK, PgConnection, _chunks

#: Look-back spans (seconds) tried in turn for fleet-wide "recent samples".
RECENT_SPANS = (60.0, 600.0, 3600.0, 86400.0)


# Long rows in, one wide row per reading out; DISTINCT ON drops a metric repeated within the
# batch so a reading never lists a metric twice. A reading already stored is left as it is.
_SAMPLE_INSERT = """
INSERT INTO monitoring_samples (device_id, ts, seq, metrics, vals)
SELECT d, t, s, array_agg(m ORDER BY m), array_agg(v ORDER BY m)
FROM (
    SELECT DISTINCT ON (d, t, s, m) d, m, t, v, s
    FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[], $5::bigint[])
        AS u(d, m, t, v, s)
    ORDER BY d, t, s, m
) AS r
GROUP BY d, t, s
ON CONFLICT DO NOTHING
"""


# The same rows, already one per reading: readings that carry the same metrics (``$4``, sorted)
# send their values as one flat array, ``$5`` per reading, and each row takes its slice (a
# slice of a float8 array is an offset, not a scan). No sort and no grouping on the server,
# and a fifth of the values to encode and parse: 20,000 readings of 5 metrics took the
# statement above 1.1-1.5 s (load average 7 on 2 cores), of which the client's encoding
# 0.2 s and sending and parsing the five 100,000-element arrays 0.35 s.
_SAMPLE_INSERT_WIDE = """
INSERT INTO monitoring_samples (device_id, ts, seq, metrics, vals)
SELECT d, t, s, $4::text[], ($5::float8[])[(i - 1) * $6 + 1 : i * $6]
FROM unnest($1::text[], $2::float8[], $3::bigint[]) WITH ORDINALITY AS u(d, t, s, i)
ON CONFLICT DO NOTHING
"""


_SAMPLE_ROWS = """
SELECT s.device_id, u.metric, s.ts, u.value, s.seq
FROM monitoring_samples AS s CROSS JOIN LATERAL unnest(s.metrics, s.vals) AS u(metric, value)
"""


def _reading_chunks(batch: SampleBatch, size: int | None = None) -> list[slice]:
    """Slices of about ``size`` rows that never cut through one reading's rows.

    A reading cut in two would be stored with only the metrics of the first part (the second
    write finds the key present and does nothing). Rows of one reading are contiguous in the
    batches the agents build; where they are not, the whole batch goes in one statement.
    """
    size = size or WRITE_CHUNK
    n = len(batch)
    if n <= size:
        return [slice(0, n)]
    out: list[slice] = []
    begin = 0
    while n - begin > size:
        cut = begin + size
        # move the cut forward to the first row of the next reading
        while cut < n and (
            batch.device_id[cut] == batch.device_id[cut - 1]
            and batch.ts[cut] == batch.ts[cut - 1]
            and batch.seq[cut] == batch.seq[cut - 1]
        ):
            cut += 1
        out.append(slice(begin, cut))
        begin = cut
    if begin < n:
        out.append(slice(begin, n))
    return out


@dataclass(frozen=True, slots=True)
class _WideGroup:
    """Readings that carry the same metrics: one wide row each."""

    metrics: list[str]  # sorted
    device_id: npt.NDArray[np.object_]
    ts: npt.NDArray[np.float64]
    seq: npt.NDArray[np.int64]
    vals: npt.NDArray[np.float64]  # len(metrics) per reading, in the order of ``metrics``


def _wide_groups(batch: SampleBatch) -> list[_WideGroup] | None:
    """The batch as wide rows grouped by metric set, or None when it is not made of whole
    readings each listed once with every metric once (then the general statement merges).

    The agents write each reading's rows next to each other and in the same metric order for
    a device type, so this is one vectorised check for a batch of one device type, and a
    dictionary of metric sets otherwise.
    """
    n = len(batch)
    dev, ts, seq, met = batch.device_id, batch.ts, batch.seq, batch.metric
    change = np.ones(n, dtype=np.bool_)
    change[1:] = (dev[1:] != dev[:-1]) | (ts[1:] != ts[:-1]) | (seq[1:] != seq[:-1])
    starts = np.flatnonzero(change)
    keys = list(zip(dev[starts].tolist(), ts[starts].tolist(), seq[starts].tolist(), strict=True))
    if len(set(keys)) != len(keys):  # a reading twice in the batch, or its rows apart
        return None
    lengths = np.diff(np.append(starts, n))
    k = int(lengths[0])
    by_metrics: dict[tuple[str, ...], list[int]] = {}
    if (lengths == k).all() and (met.reshape(-1, k) == met[:k]).all():
        by_metrics[tuple(met[:k].tolist())] = starts.tolist()
    else:
        for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
            by_metrics.setdefault(tuple(met[start : start + length].tolist()), []).append(start)
    groups = []
    for names, first in by_metrics.items():
        if len(set(names)) != len(names):  # a metric twice in one reading
            return None
        order = np.argsort(np.array(names, dtype=object), kind="stable")
        at = np.asarray(first, dtype=np.int64)
        rows = (at[:, None] + order[None, :]).ravel()
        groups.append(
            _WideGroup(
                metrics=[names[i] for i in order.tolist()],
                device_id=dev[at],
                ts=ts[at],
                seq=seq[at],
                vals=batch.value[rows],
            )
        )
    return groups


def _sample_from(row: asyncpg.Record) -> Sample:
    seq = row["seq"]
    return Sample(
        device_id=row["device_id"],
        metric=row["metric"],
        ts=row["ts"],
        value=row["value"],
        seq=None if seq < 0 else seq,
    )


class PgSamples(PgConnection):
    """Raw samples: ``monitoring_samples``."""

    async def insert_samples(self, batch: SampleBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        groups = _wide_groups(batch)
        async with self.pool.acquire() as conn:
            if groups is not None:
                for g in groups:
                    k = len(g.metrics)
                    for part in _chunks(len(g.ts), max(1, WRITE_CHUNK // k)):
                        await conn.execute(
                            _SAMPLE_INSERT_WIDE,
                            g.device_id[part].tolist(),
                            g.ts[part].tolist(),
                            g.seq[part].tolist(),
                            g.metrics,
                            g.vals[part.start * k : part.stop * k].tolist(),
                            k,
                        )
                return
            for part in _reading_chunks(batch):
                await conn.execute(
                    _SAMPLE_INSERT,
                    batch.device_id[part].tolist(),
                    batch.metric[part].tolist(),
                    batch.ts[part].tolist(),
                    batch.value[part].tolist(),
                    batch.seq[part].tolist(),
                )

    async def delete_samples_before(self, ts: float) -> int:
        """Retention: drop readings older than ``ts``; returns the number of samples dropped."""
        deleted = await self.pool.fetchval(
            "WITH d AS (DELETE FROM monitoring_samples WHERE ts < $1 "
            "RETURNING cardinality(vals) AS n) SELECT coalesce(sum(n), 0) FROM d",
            ts,
        )
        return int(deleted)

    async def query_samples(
        self,
        device_id: str,
        *,
        metrics: Sequence[str] | None,
        start: float,
        end: float,
        limit: int = 10_000,
    ) -> list[Sample]:
        """Samples with ``start <= ts < end``, oldest first (by ts, seq, metric)."""
        rows = await self.pool.fetch(
            f"{_SAMPLE_ROWS} WHERE s.device_id = $1 AND s.ts >= $2 AND s.ts < $3 "
            "AND ($4::text[] IS NULL OR u.metric = ANY($4::text[])) "
            "ORDER BY s.ts, s.seq, u.metric LIMIT $5",
            device_id,
            start,
            end,
            list(metrics) if metrics is not None else None,
            limit,
        )
        return [_sample_from(r) for r in rows]

    async def recent_samples(
        self,
        *,
        device_ids: Sequence[str] | None,
        metric: str | None = None,
        since: float | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Sample]:
        """Newest samples first across devices (``None`` = every device), paginated."""
        if device_ids is not None and not device_ids:
            return []
        if device_ids is None:
            # The whole fleet, newest first, has no index to walk (ts has only a BRIN index,
            # which keeps the write path cheap). Look back over growing spans instead: the BRIN
            # index confines each try to recent blocks, and once a span holds a full page the
            # page is exact (every newer sample is inside it). The last try is unbounded.
            query = (
                f"{_SAMPLE_ROWS} WHERE ($1::text IS NULL OR u.metric = $1) "
                "AND ($2::float8 IS NULL OR s.ts >= $2) "
                "ORDER BY s.ts DESC, s.device_id, s.seq DESC, u.metric LIMIT $3"
            )
            wanted = limit + offset
            now = time.time()
            tries: list[float | None] = [
                now - span for span in RECENT_SPANS if since is None or now - span > since
            ]
            tries.append(since)
            rows = []
            for lower in tries:
                rows = await self.pool.fetch(query, metric, lower, wanted)
                if len(rows) >= wanted:
                    break
            rows = rows[offset:]
        else:
            # Newest (limit + offset) per device from its own primary-key range, then merged.
            rows = await self.pool.fetch(
                "SELECT r.* FROM unnest($1::text[]) AS d(id) CROSS JOIN LATERAL ("
                f"  {_SAMPLE_ROWS}"
                "  WHERE s.device_id = d.id AND ($2::text IS NULL OR u.metric = $2)"
                "  AND ($3::float8 IS NULL OR s.ts >= $3)"
                "  ORDER BY s.ts DESC, s.seq DESC, u.metric LIMIT $4) AS r "
                "ORDER BY r.ts DESC, r.device_id, r.seq DESC, r.metric LIMIT $5 OFFSET $6",
                sorted(set(device_ids)),
                metric,
                since,
                limit + offset,
                limit,
                offset,
            )
        return [_sample_from(r) for r in rows]
