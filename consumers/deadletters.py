"""Dead letters: the original record, byte for byte, with the reason in its headers."""

from __future__ import annotations

from datetime import UTC, datetime

from consumers.runner import Record
from consumers.validate import Rejection
from runtime.kafka import OutgoingRecord
from schemas.events import DeadLetterHeaders


def dead_letter(
    record: Record, rejection: Rejection, now: datetime | None = None
) -> OutgoingRecord:
    """The dead letter of a record: same key, same value, reason and origin in headers."""
    headers = DeadLetterHeaders(
        reason=rejection.reason,
        detail=rejection.detail,
        origin_topic=record.topic,
        origin_partition=record.partition,
        origin_offset=record.offset,
        rejected_at=now or datetime.now(UTC),
    )
    return (record.key, record.value, headers.to_kafka())
