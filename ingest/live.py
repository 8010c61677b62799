"""Live totals for a crowd: one broker consumer per API process, fanned out to every client.

The hub tails the compacted totals topic from its beginning and keeps the highest version
of every campaign in memory. Each stream client subscribes to one campaign and gets a
small queue of its own; a client too slow to keep up is dropped (its stream ends and the
browser reconnects with `Last-Event-ID`), so no client can make the process's memory grow.
Nothing about the clients is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator

from aiokafka import TopicPartition

from runtime.kafka import make_consumer
from runtime.logs import get_logger
from runtime.offsets import partitions_of
from runtime.settings import Settings
from runtime.totals_feed import keep_latest
from schemas.events import CampaignTotals

log = get_logger("ingest.live")

QUEUE_SIZE = 8


class Subscriber:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[CampaignTotals] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = False

    def offer(self, totals: CampaignTotals) -> bool:
        """Queue an update; False (and dropped) if the client has fallen behind."""
        try:
            self.queue.put_nowait(totals)
        except asyncio.QueueFull:
            self.dropped = True
            return False
        return True


class TotalsHub:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._latest: dict[str, CampaignTotals] = {}
        self._subscribers: dict[str, set[Subscriber]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.public_min_count = settings.public_min_count

    @property
    def clients(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def latest(self, campaign: str) -> CampaignTotals | None:
        return self._latest.get(campaign)

    def start(self) -> None:
        self._task = asyncio.create_task(self._tail_forever(), name="totals-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def subscribe(self, campaign: str) -> Iterator[Subscriber]:
        subscriber = Subscriber()
        self._subscribers[campaign].add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers[campaign].discard(subscriber)
            if not self._subscribers[campaign]:
                del self._subscribers[campaign]

    def publish(self, value: bytes | None) -> CampaignTotals | None:
        """Fold one totals record in and hand it to the campaign's subscribers if newer."""
        totals = keep_latest(self._latest, value)
        if totals is None:
            return None
        for subscriber in list(self._subscribers.get(totals.campaign, ())):
            if not subscriber.offer(totals):
                self._subscribers[totals.campaign].discard(subscriber)
                self.dropped += 1
        return totals

    async def _tail_forever(self) -> None:
        """Read the totals topic from the beginning, forever; reconnect after failures."""
        while True:
            try:
                await self._tail()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the stream must outlive broker trouble
                log.warning("totals_tail_failed", error=type(exc).__name__)
                await asyncio.sleep(1)

    async def _tail(self) -> None:
        consumer = make_consumer(self._settings, None)
        await consumer.start()
        try:
            tps: list[TopicPartition] = []
            while not tps:
                tps = await partitions_of(consumer, self._settings.topic_totals)
                if not tps:
                    await asyncio.sleep(1)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batch = await consumer.getmany(timeout_ms=1_000, max_records=1_000)
                for records in batch.values():
                    for record in records:
                        self.publish(record.value)
        finally:
            await consumer.stop()


async def updates(
    hub: TotalsHub, campaign: str, first: CampaignTotals | None, last_seen: int | None
) -> AsyncIterator[CampaignTotals]:
    """The current totals at once (unless the client has them), then every newer version.

    Ends when the client falls too far behind; the caller's stream then closes and the
    client reconnects with the last version it saw.
    """
    with hub.subscribe(campaign) as subscriber:
        current = hub.latest(campaign) or first
        sent = last_seen if last_seen is not None else -1
        if current is not None and current.version > sent:
            sent = current.version
            yield current
        while not subscriber.dropped:
            totals = await subscriber.queue.get()
            if totals.version > sent:
                sent = totals.version
                yield totals
