"""The persist handler: validate, normalise, dedupe and store a batch of submissions.

Per batch: decode every record (bad ones become dead letters), one transaction that checks
the campaigns and writes rows and totals, then the accepted events and dead letters are
produced and acknowledged. Only then does the runner commit the offsets.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaProducer

from consumers.deadletters import send_dead_letter
from consumers.runner import Record
from consumers.store import StagingRow, StoredSignature, write_batch
from consumers.validate import Rejection, decode, dedupe_key
from runtime.campaigns import campaign_statuses
from runtime.topics import Topics
from schemas.campaign import CampaignStatus
from schemas.events import AcceptedEvent
from schemas.reasons import Reason
from schemas.submission import Submission


class PersistHandler:
    name = "persist"

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        topics: Topics,
        secret: bytes,
        max_record_bytes: int,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._topics = topics
        self._secret = secret
        self._max_record_bytes = max_record_bytes

    async def handle(self, records: Sequence[Record]) -> Mapping[str, int]:
        valid: list[tuple[Record, Submission]] = []
        rejected: list[tuple[Record, Rejection]] = []
        for record in records:
            outcome = decode(record.value, self._max_record_bytes)
            if isinstance(outcome, Rejection):
                rejected.append((record, outcome))
            else:
                valid.append((record, outcome))

        async with self._pool.acquire() as conn, conn.transaction():
            statuses = await campaign_statuses(conn)
            rows: list[StagingRow] = []
            for record, submission in valid:
                status = statuses.get(submission.campaign)
                if status is None:
                    rejected.append(
                        (record, Rejection(Reason.UNKNOWN_CAMPAIGN, "campaign: unknown_campaign"))
                    )
                elif status is CampaignStatus.CLOSED:
                    rejected.append(
                        (record, Rejection(Reason.CAMPAIGN_CLOSED, "campaign: campaign_closed"))
                    )
                else:
                    rows.append(self._row(submission))
            result = await write_batch(conn, rows)

        accepted_at = datetime.now(UTC)
        futures = [
            await self._send_accepted(signature, accepted_at)
            for signature in (*result.inserted, *result.already_stored)
        ]
        futures += [
            await send_dead_letter(self._producer, self._topics.rejected, record, rejection)
            for record, rejection in rejected
        ]
        await asyncio.gather(*futures)

        reasons = Counter(rejection.reason.value for _, rejection in rejected)
        return {
            "inserted": len(result.inserted),
            "redelivered": len(result.already_stored),
            "duplicates": result.duplicates,
            "dead_lettered": len(rejected),
            **{f"rejected_{reason}": n for reason, n in sorted(reasons.items())},
        }

    def _row(self, s: Submission) -> StagingRow:
        return (
            s.submission_id,
            s.campaign,
            dedupe_key(self._secret, s.email),
            s.first_name,
            s.last_name,
            s.email,
            s.country,
            s.postcode,
            s.consent,
            s.language,
            s.source,
            s.submitted_at,
            s.received_at,
        )

    async def _send_accepted(
        self, signature: StoredSignature, accepted_at: datetime
    ) -> asyncio.Future[object]:
        event = AcceptedEvent(
            signature_id=signature.signature_id,
            submission_id=signature.submission_id,
            campaign=signature.campaign,
            country=signature.country,
            source=signature.source,
            submitted_at=signature.submitted_at,
            accepted_at=accepted_at,
        )
        future: asyncio.Future[object] = await self._producer.send(
            self._topics.accepted,
            value=event.model_dump_json().encode(),
            key=signature.campaign.encode(),
        )
        return future
