"""Kafka clients built the same way everywhere, from settings."""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner

from runtime.settings import ConfigError, Settings


def bootstrap_of(settings: Settings) -> str:
    if not settings.kafka_bootstrap_servers:
        raise ConfigError(
            "KAFKA_BOOTSTRAP_SERVERS: not set (the brokers' host:port list; `signatures up` logs"
            " the embedded broker's as embedded_broker_started)"
        )
    return settings.kafka_bootstrap_servers


def security_options(settings: Settings) -> dict[str, Any]:
    """How every Kafka client of the pipeline (producer, consumer, admin) connects: the
    keyword arguments of aiokafka's clients for KAFKA_SECURITY_PROTOCOL and its companions.

    Only what the protocol uses is passed; Settings has refused the other combinations.
    TLS verifies the brokers' certificates and host names, against KAFKA_SSL_CAFILE or else
    the system's CAs (a managed service's certificates are publicly signed).
    """
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = tls_context(
            settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile
        )
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        if settings.kafka_sasl_password is None:  # Settings refuses it; for the type checker
            raise ValueError("KAFKA_SASL_PASSWORD: not set")
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        # aiokafka's names; PLAIN and both SCRAMs take them alike
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


@functools.cache
def tls_context(cafile: Path | None, certfile: Path | None, keyfile: Path | None) -> ssl.SSLContext:
    """One context per process and set of files, shared by its clients: loading the
    system's CAs takes tens of milliseconds, too long to repeat on every reconnection."""
    context: ssl.SSLContext = create_ssl_context(cafile=cafile, certfile=certfile, keyfile=keyfile)
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """Where and how to connect: what every client is built with."""
    return {"bootstrap_servers": bootstrap_of(settings), **security_options(settings)}


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        **client_options(settings),
        "acks": "all",
        "enable_idempotence": settings.kafka_enable_idempotence,
        "linger_ms": settings.producer_linger_ms,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 10_000,
        "compression_type": None,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(
    settings: Settings, group_id: str | None, topics: Iterable[str] = (), **overrides: Any
) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        **client_options(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        # A new group must start at the backlog, never skip it (aiokafka defaults to latest).
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "fetch_max_bytes": 32 * 1024 * 1024,
        "isolation_level": "read_uncommitted",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


# key, value, headers
OutgoingRecord = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]
_partitioner = DefaultPartitioner()


async def produce_many(
    producer: AIOKafkaProducer, topic: str, records: Sequence[OutgoingRecord]
) -> None:
    """Produce records and wait until the broker has them all.

    Partitioned like `send()` (murmur2 of the key), but appended to batches directly:
    per record this costs a fraction of `send()`, which makes a future per message.
    """
    if not records:
        return
    partitions = await producer.partitions_for(topic)
    if not partitions:
        raise KafkaError(f"no partitions known for topic {topic}")
    ordered = sorted(partitions)
    by_partition: dict[int, list[OutgoingRecord]] = defaultdict(list)
    by_key: dict[bytes, int] = {}  # murmur2 is pure Python; keys repeat (a campaign's slug)
    for record in records:
        key = record[0]
        if key is None:
            partition = _partitioner(None, ordered, ordered)
        elif (partition := by_key.get(key, -1)) < 0:
            partition = by_key[key] = _partitioner(key, ordered, ordered)
        by_partition[partition].append(record)
    futures: list[asyncio.Future[Any]] = []
    for partition, items in by_partition.items():
        batch = producer.create_batch()
        for key, value, headers in items:
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    raise ValueError("record larger than the producer's max_batch_size")
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*futures)


async def read_to_end(settings: Settings, topic: str, timeout: float = 10.0) -> list[Any]:
    """Every record of a topic, from its beginning up to its end as of now (no group)."""
    consumer = make_consumer(settings, None)
    await consumer.start()
    records: list[Any] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return records
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        async with asyncio.timeout(timeout):
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                for part in batch.values():
                    records.extend(part)
                positions = [await consumer.position(tp) for tp in tps]
                highwaters = [consumer.highwater(tp) for tp in tps]
                if all(
                    h is not None and p >= h for p, h in zip(positions, highwaters, strict=True)
                ):
                    return records
    finally:
        await consumer.stop()
