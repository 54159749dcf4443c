"""KafkaPublisher against a real broker: topics with different partition counts."""

from __future__ import annotations

import secrets

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from iot_common.topics import Topics
from stream_agents.publisher import KafkaPublisher


async def test_same_keys_to_topics_with_different_partition_counts(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topics = Topics(f"{topic_prefix}{secrets.token_hex(3)}.")
    raw, alerts = topics.telemetry_raw, topics.alerts
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(raw, 8, 1), NewTopic(alerts, 1, 1)])
    finally:
        await admin.close()
    keys = [f"device-{i}".encode() for i in range(50)]
    pub = KafkaPublisher(kafka_bootstrap)
    await pub.start()
    try:
        # The 8-partition topic first fills the key→partition cache with partitions 0..7;
        # the 1-partition topic must not reuse them ("Unrecognized partition" before the fix).
        await pub.publish(raw, [(k, b"r") for k in keys])
        await pub.publish(alerts, [(k, b"a") for k in keys])
        await pub.publish(raw, [(k, b"r2") for k in keys])
    finally:
        await pub.stop()
    consumer = AIOKafkaConsumer(
        raw, alerts, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    got: dict[str, list[tuple[int, bytes]]] = {raw: [], alerts: []}
    try:
        for _ in range(60):
            for tp, recs in (await consumer.getmany(timeout_ms=300)).items():
                got[tp.topic].extend((tp.partition, r.key) for r in recs if r.key)
            if len(got[raw]) >= 100 and len(got[alerts]) >= 50:
                break
    finally:
        await consumer.stop()
    assert len(got[alerts]) == 50
    assert all(p == 0 for p, _ in got[alerts])
    assert len(got[raw]) == 100
    # Java-client partitioning: murmur2(key) mod partition count.
    assert all(p == (murmur2(k) & 0x7FFFFFFF) % 8 for p, k in got[raw])
    assert len({p for p, _ in got[raw]}) > 1
