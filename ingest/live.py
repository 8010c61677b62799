"""Live totals for a crowd: one broker consumer per API process, fanned out to every client.

The hub tails the compacted totals topic from its beginning and keeps the highest version
of every campaign in memory. Each stream client subscribes to one campaign and gets a
small queue of its own; a client too slow to keep up is dropped (its stream ends and the
browser reconnects with `Last-Event-ID`), so no client can make the process's memory grow.
Each version is serialised once, as a `Frame` (its JSON and its server-sent event), and
that same frame goes to every client. A process serves at most SIGNATURES_SSE_MAX_STREAMS
streams at once; past that the API answers 503 with Retry-After, and a browser's
EventSource tries again. Nothing about the clients is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from runtime.kafka import make_consumer
from runtime.logs import get_logger
from runtime.offsets import partitions_of
from runtime.settings import Settings
from runtime.totals_feed import keep_latest
from schemas.events import CampaignTotals

log = get_logger("ingest.live")

QUEUE_SIZE = 8
# A version as a client may send it back: ASCII digits that fit 64 bits, nothing else.
_EVENT_ID = re.compile(r"[0-9]{1,18}")


def last_event_id(header: str) -> int | None:
    """The version a reconnecting client saw last, or None: anything but a plain decimal
    of sane length (5,000 digits, a sign, Unicode digits, hex) is ignored, never an error."""
    return int(header) if _EVENT_ID.fullmatch(header) else None


@dataclass(frozen=True, slots=True)
class Frame:
    """One totals version, serialised once for every reader: its JSON and its event."""

    totals: CampaignTotals
    json: bytes
    event: bytes

    @classmethod
    def of(cls, totals: CampaignTotals) -> Frame:
        data = totals.model_dump_json()
        event = ServerSentEvent(data, event="totals", id=str(totals.version)).encode()
        return cls(totals, data.encode(), event)


class Subscriber:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Frame] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = False

    def offer(self, frame: Frame) -> bool:
        """Queue an update; False (and dropped) if the client has fallen behind."""
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.dropped = True
            return False
        return True


class TotalsHub:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._latest: dict[str, CampaignTotals] = {}
        self._frames: dict[str, Frame] = {}
        self._subscribers: dict[str, set[Subscriber]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.public_min_count = settings.public_min_count
        self.max_streams = settings.sse_max_streams
        self.streams = 0  # open streams, counted from the request on

    @property
    def clients(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def latest(self, campaign: str) -> CampaignTotals | None:
        return self._latest.get(campaign)

    def latest_frame(self, campaign: str) -> Frame | None:
        return self._frames.get(campaign)

    def reserve(self) -> bool:
        """Take one of the process's stream places; False if they are all taken."""
        if self.streams >= self.max_streams:
            return False
        self.streams += 1
        return True

    def release(self) -> None:
        self.streams -= 1

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
        frame = self._frames[totals.campaign] = Frame.of(totals)
        for subscriber in list(self._subscribers.get(totals.campaign, ())):
            if not subscriber.offer(frame):
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
    hub: TotalsHub, campaign: str, first: Frame | None, last_seen: int | None
) -> AsyncIterator[Frame]:
    """The current totals at once (unless the client has them), then every newer version.

    Ends when the client falls too far behind; the caller's stream then closes and the
    client reconnects with the last version it saw.
    """
    with hub.subscribe(campaign) as subscriber:
        current = hub.latest_frame(campaign) or first
        sent = last_seen if last_seen is not None else -1
        if current is not None and current.totals.version > sent:
            sent = current.totals.version
            yield current
        while not subscriber.dropped:
            frame = await subscriber.queue.get()
            if frame.totals.version > sent:
                sent = frame.totals.version
                yield frame


class CappedStream(EventSourceResponse):
    """A totals stream that gives its place back (`TotalsHub.release`) however it ends."""

    def __init__(self, release: Callable[[], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
