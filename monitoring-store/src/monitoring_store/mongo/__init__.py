"""MongoDB backend of the monitoring store (PyMongo's async API, ``AsyncMongoClient``).

Needs MongoDB 7.0 or later (deletes by time on time-series collections, ``$top``,
``$setWindowFields``). Collections and why:

* ``monitoring_data`` (raw samples) — a **time-series** collection (timeField ``t``, a BSON
  date; metaField ``m = {"d": device_id, "k": metric}``; ``ts`` keeps the exact float epoch,
  ``s`` the seq, -1 when none). Raw samples are append-only and by far the largest data, which
  is what time-series bucketing and compression are for. Time-series collections allow no unique
  index, so a replayed reading cannot be refused on write; idempotency is enforced on **read**:
  every query collapses duplicates of (device, metric, ts, seq) to one sample. Replays only
  follow a crash (offsets are committed after the write), so the extra stored copies are rare,
  and retention removes them with the rest.
* ``windows`` — a **regular** collection with a unique index on
  ``(device_id, window_seconds, window_start, metric)``. A window is written more than once by
  design (late corrections, replays after a crash) and must end as one document with the
  newest values; time-series collections support neither unique indexes nor upserts, so they
  cannot give that guarantee. The key order matches the queries (one device, one size, a time
  range, all or some metrics); a second index ``(window_seconds, window_start)`` serves fleet
  summaries. A window is inserted first; a key already present gets a conditional update
  (``updated_at`` compared inside the update pipeline, the filter the bare key), so an older
  state never overwrites a newer one.
* ``device_alerts`` (``_id`` = alert_id), ``device_rules`` (``_id`` = device id, guarded by
  version), ``subscriptions`` and ``deliveries`` (``_id`` = id): regular collections.

Writes are journaled (``j: true``) unless the URL chooses a write concern: the agents commit
offsets on the store's acknowledgement, which must survive a killed server
(:func:`~monitoring_store.mongo.connection.durable_writes`).
"""

from monitoring_store.mongo.store import MongoStore

__all__ = ["MongoStore"]
