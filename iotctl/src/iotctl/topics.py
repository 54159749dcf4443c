"""Create the platform's Kafka topics on a fresh local broker, all with one partition count.

Topics auto-created by whichever client touches them first get the broker's default partition
count, so ``alerts`` could end up with fewer partitions than ``stats.windows``; a deployment
provisions its topics instead (Redpanda in production runs with auto-creation off), and so does
``iotctl`` for the broker it starts.
"""

from __future__ import annotations

import asyncio
import os

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from iot_common.topics import Topics

DEFAULT_PARTITIONS = 8


def topic_partitions() -> int:
    return int(os.environ.get("IOTCTL_TOPIC_PARTITIONS", DEFAULT_PARTITIONS))


async def _ensure(bootstrap: str, names: list[str], partitions: int) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            await admin.create_topics(
                [NewTopic(name=n, num_partitions=partitions, replication_factor=1) for n in missing]
            )
        return missing
    finally:
        await admin.close()


def ensure_topics(bootstrap: str, *, prefix: str = "", partitions: int | None = None) -> list[str]:
    """Create the missing platform topics; returns the names created."""
    try:
        return asyncio.run(
            _ensure(bootstrap, Topics(prefix).all(), partitions or topic_partitions())
        )
    except KafkaError as exc:
        raise RuntimeError(f"cannot create topics on {bootstrap}: {exc}") from exc
