"""Dead letters: the original record, byte for byte, with the reason in its headers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from consumers.runner import Record
from consumers.validate import Rejection
from schemas.events import DeadLetterHeaders


async def send_dead_letter(
    producer: AIOKafkaProducer, topic: str, record: Record, rejection: Rejection
) -> asyncio.Future[object]:
    """Queue a dead letter; the returned future resolves when the broker has it."""
    headers = DeadLetterHeaders(
        reason=rejection.reason,
        detail=rejection.detail,
        origin_topic=record.topic,
        origin_partition=record.partition,
        origin_offset=record.offset,
        rejected_at=datetime.now(UTC),
    )
    future: asyncio.Future[object] = await producer.send(
        topic, value=record.value, key=record.key, headers=headers.to_kafka()
    )
    return future
