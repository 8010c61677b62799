"""The one consume loop: fetch a batch, hand it to a handler, commit after its effects.

Offsets are committed only after the handler returned, i.e. after its database
transaction committed and its produced records were acknowledged (at-least-once; the
handlers are idempotent, so redelivery changes nothing). A rebalance waits for the batch
in flight to finish and commit before partitions move.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from consumers import metrics
from consumers.errors import is_transient, service_of
from runtime.failpoints import failpoint
from runtime.logs import get_logger

log = get_logger("consumers.runner")


class Record(Protocol):
    """What handlers read of a consumed record (aiokafka's ConsumerRecord)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


class BatchHandler(Protocol):
    name: str

    async def handle(self, records: Sequence[Record]) -> Mapping[str, int]:
        """Apply the batch's effects; return outcome counts for the batch's log line."""
        ...


@dataclass
class RunnerStats:
    batches: int = 0
    records: int = 0
    retries: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


class _FinishBatchBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:  # waits for the batch in flight to commit
            log.info(
                "partitions_revoked",
                partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in revoked),
            )

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info(
            "partitions_assigned",
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
        )


class Runner:
    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topics: Sequence[str],
        handler: BatchHandler,
        *,
        max_records: int,
        timeout_ms: int,
        stop: asyncio.Event,
        drain: bool = False,
    ) -> None:
        self._consumer = consumer
        self._topics = list(topics)
        self._handler = handler
        self._max_records = max_records
        self._timeout_ms = timeout_ms
        self._stop = stop
        self._drain = drain
        self._lock = asyncio.Lock()
        self.stats = RunnerStats()

    async def run(self) -> RunnerStats:
        """Consume until `stop` is set (or, in drain mode, until caught up)."""
        self._consumer.subscribe(self._topics, listener=_FinishBatchBeforeRevoke(self._lock))
        while not self._stop.is_set():
            batch = await self._consumer.getmany(
                timeout_ms=self._timeout_ms, max_records=self._max_records
            )
            caught_up = await self._observe_lag()
            if not batch:
                if self._drain and caught_up:
                    break
                continue
            async with self._lock:
                done = await self._process(batch)
                if not done:
                    break  # stopping while the batch kept failing: leave it uncommitted
                failpoint(f"{self._handler.name}.before_offset_commit")
                await self._commit(batch)
        return self.stats

    async def _observe_lag(self) -> bool:
        """Set the lag of each assigned partition (behind its high watermark, as of the last
        fetch); True if every one is caught up."""
        assignment = self._consumer.assignment()
        caught_up = bool(assignment)
        for tp in assignment:
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                caught_up = False
                continue
            behind = max(highwater - await self._consumer.position(tp), 0)
            metrics.LAG.labels(self._handler.name, tp.topic, str(tp.partition)).set(behind)
            caught_up = caught_up and behind == 0
        return caught_up

    async def _process(self, batch: dict[TopicPartition, list[Record]]) -> bool:
        records = [record for tp in sorted(batch) for record in batch[tp]]
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                outcome = await self._handler.handle(records)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.stats.retries += 1
                metrics.RETRIES.labels(
                    self._handler.name, service_of(exc), type(exc).__name__
                ).inc()
                log.warning(
                    "batch_retry",
                    handler=self._handler.name,
                    error=type(exc).__name__,
                    records=len(records),
                    backoff_s=round(delay, 2),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
                if self._stop.is_set():
                    return False
                delay = min(delay * 2, 5.0)
                continue
            self.stats.batches += 1
            self.stats.records += len(records)
            for key, value in outcome.items():
                self.stats.outcomes[key] = self.stats.outcomes.get(key, 0) + value
            _observe_batch(self._handler.name, len(records), time.perf_counter() - started, outcome)
            log.info(
                "batch",
                handler=self._handler.name,
                records=len(records),
                partitions={
                    f"{tp.partition}": [batch[tp][0].offset, batch[tp][-1].offset]
                    for tp in sorted(batch)
                },
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
                **outcome,
            )
            return True

    async def _commit(self, batch: dict[TopicPartition, list[Record]]) -> None:
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The partitions moved on: the new owner re-reads from the last commit and,
            # the writes being idempotent, changes nothing.
            log.warning("commit_failed_after_rebalance", error=type(exc).__name__)
        except KafkaError as exc:
            log.warning("commit_failed", error=type(exc).__name__)


_OUTCOMES = ("inserted", "duplicates", "redelivered", "dead_lettered")  # published: count.py


def _observe_batch(worker: str, records: int, seconds: float, outcome: Mapping[str, int]) -> None:
    metrics.RECORDS.labels(worker).inc(records)
    metrics.BATCH_SIZE.labels(worker).observe(records)
    metrics.BATCH_SECONDS.labels(worker).observe(seconds)
    for key in _OUTCOMES:
        if outcome.get(key):
            metrics.OUTCOMES.labels(worker, key).inc(outcome[key])
    for key, value in outcome.items():
        if key.startswith("rejected_") and value:
            metrics.DEAD_LETTERS.labels(worker, key.removeprefix("rejected_")).inc(value)
