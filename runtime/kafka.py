"""Kafka clients built the same way everywhere, from settings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from runtime.settings import Settings


def bootstrap_of(settings: Settings) -> str:
    if not settings.kafka_bootstrap_servers:
        raise ValueError("KAFKA_BOOTSTRAP_SERVERS: not set")
    return settings.kafka_bootstrap_servers


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_of(settings),
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
        "bootstrap_servers": bootstrap_of(settings),
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
