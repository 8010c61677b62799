"""Where consumer groups are: committed offsets, high watermarks and lag per partition.

High watermarks come from Fetch responses: the embedded broker answers ListOffsets
("latest") wrongly, and its admin API cannot list a group's offsets, while a consumer's
`committed()` and the fetch high watermark are right on every broker.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from runtime.kafka import make_consumer
from runtime.settings import Settings


@dataclass(frozen=True, slots=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int  # the next offset the group will read; 0 if it never committed
    high_watermark: int

    @property
    def lag(self) -> int:
        return max(self.high_watermark - self.committed, 0)


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def committed_offsets(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset of every partition of the topic (0 if none)."""
    consumer = make_consumer(settings, group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await partitions_of(consumer, topic)
        return {tp.partition: await consumer.committed(tp) or 0 for tp in tps}
    finally:
        await consumer.stop()


async def high_watermarks(settings: Settings, topic: str, timeout: float = 30.0) -> dict[int, int]:
    """The end of every partition of the topic, from fetch responses."""
    # Start near the end (ListOffsets "latest", at worst the last batch): one small fetch
    # per partition then carries the high watermark.
    consumer = make_consumer(settings, None, auto_offset_reset="latest")
    await consumer.start()
    try:
        tps = await partitions_of(consumer, topic)
        if not tps:
            return {}
        consumer.assign(tps)
        async with asyncio.timeout(timeout):
            while any(consumer.highwater(tp) is None for tp in tps):
                await consumer.getmany(timeout_ms=100, max_records=1)
        return {tp.partition: consumer.highwater(tp) or 0 for tp in tps}
    finally:
        await consumer.stop()


async def group_lag(settings: Settings, group: str, topic: str) -> list[PartitionLag]:
    committed, ends = await asyncio.gather(
        committed_offsets(settings, group, topic), high_watermarks(settings, topic)
    )
    return [
        PartitionLag(group, topic, partition, committed.get(partition, 0), end)
        for partition, end in sorted(ends.items())
    ]
