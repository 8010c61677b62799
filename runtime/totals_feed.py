"""Reading the compacted totals topic: the latest version of every campaign's totals."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition
from pydantic import ValidationError

from runtime.kafka import make_consumer
from runtime.settings import Settings
from schemas.events import CampaignTotals


def keep_latest(latest: dict[str, CampaignTotals], value: bytes | None) -> CampaignTotals | None:
    """Fold one totals record in; return it if it is newer than what was known."""
    if not value:
        return None
    try:
        totals = CampaignTotals.model_validate_json(value)
    except ValidationError:
        return None
    known = latest.get(totals.campaign)
    if known is not None and known.version >= totals.version:
        return None
    latest[totals.campaign] = totals
    return totals


async def read_published_totals(
    settings: Settings, timeout: float = 10.0
) -> dict[str, CampaignTotals]:
    """Everything on the totals topic up to its current end, highest version per campaign."""
    consumer = make_consumer(settings, None)
    await consumer.start()
    latest: dict[str, CampaignTotals] = {}
    try:
        partitions = consumer.partitions_for_topic(settings.topic_totals)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(settings.topic_totals) or set()
        tps = [TopicPartition(settings.topic_totals, p) for p in sorted(partitions)]
        if not tps:
            return latest
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        async with asyncio.timeout(timeout):
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                for records in batch.values():
                    for record in records:
                        keep_latest(latest, record.value)
                done = True
                for tp in tps:
                    highwater = consumer.highwater(tp)
                    if highwater is None or await consumer.position(tp) < highwater:
                        done = False
                if done:
                    return latest
    finally:
        await consumer.stop()
