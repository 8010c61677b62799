"""Producing in batches against the real broker: same partitions as `send()`, nothing lost."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from runtime.kafka import OutgoingRecord, make_producer, produce_many, read_to_end
from runtime.settings import Settings
from runtime.topics import ensure_topics

pytestmark = pytest.mark.integration


async def test_produce_many_partitions_by_key_like_send(settings: Settings) -> None:
    await ensure_topics(settings, settings.kafka_bootstrap_servers or "")
    topic = settings.topic_accepted
    keys = [f"campaign-{n % 7}".encode() for n in range(500)]
    records: list[OutgoingRecord] = [
        (key, str(n).encode(), [("n", str(n).encode())]) for n, key in enumerate(keys)
    ]
    records.append((None, b"unkeyed", []))
    producer = make_producer(settings)
    await producer.start()
    try:
        await produce_many(producer, topic, records)
    finally:
        await producer.stop()

    stored = await read_to_end(settings, topic)
    assert sorted(r.value for r in stored) == sorted(value or b"" for _, value, _ in records)
    partitions = list(range(settings.partitions))
    murmur2 = DefaultPartitioner()
    for r in stored:
        if r.key is not None:
            assert r.partition == murmur2(r.key, partitions, partitions)
    by_partition = [[r.value for r in stored if r.partition == p] for p in partitions]
    for values in by_partition:  # in order within a partition
        keyed = [int(v) for v in values if v != b"unkeyed"]
        assert keyed == sorted(keyed)
