"""The one consume loop: fetch a batch, hand it to a handler, commit after its effects.

Offsets are committed only after the handler's effects are done, i.e. after its database
transaction committed and its produced records were acknowledged (at-least-once; the
handlers are idempotent, so redelivery changes nothing). A rebalance waits for the batch
in flight to finish and commit before partitions move.

Each batch goes through two steps: `prepare`, which has no effects (decoding), and the
effects themselves. While one batch's effects wait on the database, the next batch is
fetched and prepared, so that the process has work while its queries run. Batches are
applied and committed strictly one after another. A batch fetched before a rebalance is
dropped with the one fetched meanwhile, and every partition still assigned is read again
from its committed offset: a fetched record is either applied and committed, or read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
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


# A prepared batch's effects: applied, and retried on transient errors, by the runner;
# returns outcome counts for the batch's log line.
Effects = Callable[[], Awaitable[Mapping[str, int]]]


class BatchHandler(Protocol):
    name: str

    async def prepare(self, records: Sequence[Record]) -> Effects:
        """Everything that has no effect (decoding); the effects come back to be applied."""
        ...


class _Applied(enum.Enum):
    YES = "applied and committed"
    DROPPED = "fetched before a rebalance: to be read again"
    STOPPED = "stopped while the batch kept failing: left uncommitted"


@dataclass(frozen=True)
class _Prepared:
    batch: dict[TopicPartition, list[Record]]
    effects: Effects
    generation: int  # of the assignment it was fetched under


@dataclass
class RunnerStats:
    batches: int = 0
    records: int = 0
    retries: int = 0
    dropped: int = 0  # batches fetched before a rebalance, read again
    outcomes: dict[str, int] = field(default_factory=dict)


class _FinishBatchBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, lock: asyncio.Lock, revoked: Callable[[], None]) -> None:
        self._lock = lock
        self._revoked = revoked

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:  # waits for the batch in flight to commit
            if revoked:  # with none held, nothing fetched so far can be stale
                self._revoked()
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
        self._generation = 0  # assignments revoked so far
        self.stats = RunnerStats()

    async def run(self) -> RunnerStats:
        """Consume until `stop` is set (or, in drain mode, until caught up)."""
        self._consumer.subscribe(
            self._topics, listener=_FinishBatchBeforeRevoke(self._lock, self._revoked)
        )
        prepared: _Prepared | None = None
        while not self._stop.is_set():
            if prepared is None:
                prepared, caught_up = await self._fetch()
                if prepared is None:
                    if self._drain and caught_up:
                        break
                    continue
            applying = asyncio.create_task(self._apply(prepared))
            try:
                upcoming, _ = await self._fetch()  # while the batch's queries run
            except BaseException:
                applying.cancel()
                await asyncio.gather(applying, return_exceptions=True)
                raise
            applied = await applying
            if applied is _Applied.STOPPED:
                break  # stopping while the batch kept failing: leave it uncommitted
            if applied is _Applied.DROPPED:
                # a rebalance came after its fetch: `upcoming`, too, is read again
                self.stats.dropped += 1
                await self._reread()
                upcoming = None
            prepared = upcoming
        return self.stats

    def _revoked(self) -> None:
        self._generation += 1  # what was fetched before is not applied

    async def _fetch(self) -> tuple[_Prepared | None, bool]:
        """The next batch, prepared, or None; and whether every partition is caught up."""
        generation = self._generation
        batch = await self._consumer.getmany(
            timeout_ms=self._timeout_ms, max_records=self._max_records
        )
        caught_up = await self._observe_lag()
        if not batch or self._stop.is_set():
            return None, caught_up
        records = [record for tp in sorted(batch) for record in batch[tp]]
        effects = await self._handler.prepare(records)
        return _Prepared(batch, effects, generation), caught_up

    async def _apply(self, prepared: _Prepared) -> _Applied:
        """Apply and commit a prepared batch, unless a rebalance came after its fetch."""
        async with self._lock:
            if prepared.generation != self._generation:
                return _Applied.DROPPED
            if not await self._process(prepared):
                return _Applied.STOPPED
            failpoint(f"{self._handler.name}.before_offset_commit")
            await self._commit(prepared.batch)
            return _Applied.YES

    async def _reread(self) -> None:
        """Every assigned partition is read again from its committed offset (from the
        start if it has none): what was fetched but not applied is fetched again. A
        partition that moves meanwhile is read from its committed offset by its new owner."""
        log.info("batch_dropped_after_rebalance")
        delay = 0.1
        while not self._stop.is_set():  # once stopped, nothing more is committed
            try:
                offsets = {}
                for tp in self._consumer.assignment():
                    offset = await self._consumer.committed(tp)
                    if offset is None:
                        offset = (await self._consumer.beginning_offsets([tp]))[tp]
                    offsets[tp] = offset
                for tp, offset in offsets.items():  # all at once: the next fetch has them all
                    with contextlib.suppress(IllegalStateError):  # no longer assigned
                        self._consumer.seek(tp, offset)
            except KafkaError as exc:  # the broker is unreachable: nothing may go on before
                log.warning("reread_retry", error=type(exc).__name__, backoff_s=delay)
                delay = await self._back_off(delay)
            else:
                return

    async def _back_off(self, delay: float) -> float:
        """Wait `delay` seconds, or less if stopped; the next, doubled delay (at most 5 s)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=delay)
        return min(delay * 2, 5.0)

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

    async def _process(self, prepared: _Prepared) -> bool:
        batch = prepared.batch
        records = sum(map(len, batch.values()))
        delay = 0.1
        while True:
            started = time.perf_counter()
            try:
                outcome = await prepared.effects()
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
                    records=records,
                    backoff_s=round(delay, 2),
                )
                delay = await self._back_off(delay)
                if self._stop.is_set():
                    return False
                continue
            self.stats.batches += 1
            self.stats.records += records
            for key, value in outcome.items():
                self.stats.outcomes[key] = self.stats.outcomes.get(key, 0) + value
            _observe_batch(self._handler.name, records, time.perf_counter() - started, outcome)
            log.info(
                "batch",
                handler=self._handler.name,
                records=records,
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


_OUTCOMES = (
    "inserted",
    "duplicates",
    "redelivered",
    "dead_lettered",
    "erased",
)  # published: count.py


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
    if outcome.get("erased"):
        # the one reason so far: received before its sender's erasure (runtime/erasure.py)
        metrics.ERASED.labels("received_before_erasure").inc(outcome["erased"])
