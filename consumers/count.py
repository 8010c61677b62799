"""The counter: publishes each campaign's absolute, versioned totals to the totals topic.

The totals themselves are kept exact by the persist workers, in the same transaction as
the rows they count. The counter reads them and publishes every new version, keyed by
campaign, on the compacted topic: prompted by accepted events, and by a short poll that
also catches campaign changes (a close) and anything a crash left unpublished.
Publishing a version twice, or out of order, is harmless: readers keep the highest.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaProducer

from consumers import metrics
from consumers.deadletters import dead_letter
from consumers.errors import TRANSIENT
from consumers.runner import Effects, Record
from consumers.validate import Rejection
from runtime.campaigns import read_totals, totals_versions
from runtime.failpoints import failpoint
from runtime.kafka import OutgoingRecord, produce_many
from runtime.logs import get_logger
from runtime.topics import Topics
from schemas.reasons import Reason

log = get_logger("consumers.count")


class CountHandler:
    name = "count"

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        topics: Topics,
        *,
        public_min_count: int,
    ) -> None:
        self._pool = pool
        self._min_count = public_min_count
        self._producer = producer
        self._topics = topics
        self._published: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def prepare(self, records: Sequence[Record]) -> Effects:
        return functools.partial(self._publish_for, records)

    async def _publish_for(self, records: Sequence[Record]) -> Mapping[str, int]:
        campaigns: set[str] = set()
        dead: list[OutgoingRecord] = []
        for record in records:
            campaign = record.key.decode() if record.key else _campaign_of(record.value)
            if campaign is None:
                rejection = Rejection(Reason.MALFORMED_JSON, "accepted event without a campaign")
                dead.append(dead_letter(record, rejection))
            else:
                campaigns.add(campaign)
        await produce_many(self._producer, self._topics.rejected, dead)
        published = await self.publish_changed(sorted(campaigns))
        return {"campaigns": len(campaigns), "published": published, "dead_lettered": len(dead)}

    async def publish_changed(self, campaigns: list[str] | None = None) -> int:
        """Publish the totals whose version is newer than the last one published here."""
        async with self._lock:
            if campaigns is None:
                versions = await totals_versions(self._pool)
                campaigns = [c for c, v in versions.items() if v != self._published.get(c)]
            if not campaigns:
                return 0
            totals = [
                t
                for t in await read_totals(self._pool, campaigns, min_count=self._min_count)
                if t.version != self._published.get(t.campaign)
            ]
            failpoint("count.before_publish")
            futures = [
                await self._producer.send(
                    self._topics.totals,
                    key=t.campaign.encode(),
                    value=t.model_dump_json().encode(),
                )
                for t in totals
            ]
            await asyncio.gather(*futures)
            now = datetime.now(UTC)
            for t in totals:
                self._published[t.campaign] = t.version
                metrics.TOTALS_DELAY.observe(max((now - t.updated_at).total_seconds(), 0.0))
            metrics.OUTCOMES.labels(self.name, "published").inc(len(totals))
            return len(totals)

    async def poll_forever(self, interval_s: float, stop: asyncio.Event) -> None:
        """The safety net: publish whatever changed, every `interval_s`, until stopped."""
        while not stop.is_set():
            try:
                await self.publish_changed()
            except TRANSIENT as exc:  # retried on the next tick
                log.warning("totals_poll_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval_s)


def _campaign_of(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        event = json.loads(value)
    except ValueError:
        return None
    campaign = event.get("campaign") if isinstance(event, dict) else None
    return campaign if isinstance(campaign, str) else None
