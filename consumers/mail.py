"""The mail worker's handler: a confirmation email queued for every new pending signature.

It reads the accepted topic in its own consumer group and, per batch, inserts one
'confirm' row per pending signature into the mail outbox, keyed by the signature's own
submission id: a redelivered event finds its row there and queues nothing more, and a
signature confirmed or removed meanwhile is no longer pending, so nothing is queued for it.
The outbox sender (`consumers.mailer`) does the sending, beside this handler. Events the
worker cannot read become dead letters, as in the counter.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from uuid import UUID

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from consumers import metrics
from consumers.deadletters import dead_letter
from consumers.runner import Effects, Record
from consumers.validate import Rejection
from runtime.kafka import OutgoingRecord, produce_many
from runtime.topics import Topics
from schemas.campaign import SignatureState
from schemas.reasons import Reason

_QUEUE = """
INSERT INTO mail_outbox (prompted_by, kind, submission_id, campaign)
SELECT submission_id, 'confirm', submission_id, campaign FROM signatures
WHERE submission_id = ANY($1) AND state = 'pending'
ON CONFLICT DO NOTHING
"""

_STATES = frozenset(state.value for state in SignatureState)


class MailHandler:
    name = "mail"

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        topics: Topics,
        *,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._topics = topics
        self._on_queued = on_queued

    async def prepare(self, records: Sequence[Record]) -> Effects:
        pending: list[UUID] = []
        dead: list[OutgoingRecord] = []
        reasons: Counter[str] = Counter()
        for record in records:
            outcome = pending_signature(record.value)
            if isinstance(outcome, Rejection):
                dead.append(dead_letter(record, outcome))
                reasons[f"rejected_{outcome.reason.value}"] += 1
            elif outcome is not None:
                pending.append(outcome)
        return functools.partial(self._queue, pending, dead, reasons)

    async def _queue(
        self, pending: list[UUID], dead: list[OutgoingRecord], reasons: Counter[str]
    ) -> Mapping[str, int]:
        queued = 0
        if pending:
            status = await self._pool.execute(_QUEUE, pending)
            queued = int(status.rsplit(" ", 1)[1])
        await produce_many(self._producer, self._topics.rejected, dead)
        if queued:
            metrics.EMAILS_QUEUED.labels("confirm").inc(queued)
            self._on_queued()
        return {"pending": len(pending), "queued": queued, "dead_lettered": len(dead), **reasons}


_MALFORMED = Rejection(Reason.MALFORMED_JSON, "accepted event without a valid state or id")


def pending_signature(value: bytes | None) -> UUID | Rejection | None:
    """The submission id of a pending signature's event; None for any other state."""
    if not value:
        return Rejection(Reason.EMPTY_RECORD, "empty accepted event")
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return _MALFORMED
    state = event.get("state") if isinstance(event, dict) else None
    if state not in _STATES:
        return _MALFORMED
    try:
        submission_id = UUID(event.get("submission_id"))
    except (TypeError, ValueError):
        return _MALFORMED
    return submission_id if state == SignatureState.PENDING else None
