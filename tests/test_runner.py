"""The consume loop against the real broker: the next batch is prepared while one is
applied, and a batch fetched before a rebalance is read again, never skipped."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence

import pytest

from consumers.runner import Effects, Record, Runner
from runtime.kafka import make_consumer
from runtime.offsets import committed_offsets, high_watermarks
from runtime.settings import Settings
from tests.helpers import produce, wait_until

pytestmark = pytest.mark.integration

RECORDS = 300
BATCH = 10


class Recording:
    """Records what it applied; its effects wait for `gate` while the gate is closed."""

    name = "recording"

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate
        self.prepared = 0
        self.applied: list[tuple[int, int]] = []  # (partition, offset)

    async def prepare(self, records: Sequence[Record]) -> Effects:
        self.prepared += 1
        return functools.partial(self._apply, [(r.partition, r.offset) for r in records])

    async def _apply(self, keys: list[tuple[int, int]]) -> Mapping[str, int]:
        await self.gate.wait()
        self.applied.extend(keys)
        return {"applied": len(keys)}


class Member:
    """One runner in the test's consumer group, in this process."""

    def __init__(self, settings: Settings, gate_open: bool) -> None:
        gate = asyncio.Event()
        if gate_open:
            gate.set()
        self.handler = Recording(gate)
        self.stop = asyncio.Event()
        self._consumer = make_consumer(settings, settings.persist_group)
        self.runner = Runner(
            self._consumer,
            [settings.topic_submitted],
            self.handler,
            max_records=BATCH,
            timeout_ms=100,
            stop=self.stop,
        )
        self.task: asyncio.Task[object] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self.task = asyncio.create_task(self.runner.run())

    async def close(self) -> None:
        self.stop.set()
        self.handler.gate.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)
        await self._consumer.stop()


async def all_committed(settings: Settings) -> bool:
    ends = await high_watermarks(settings, settings.topic_submitted)
    done = await committed_offsets(settings, settings.persist_group, settings.topic_submitted)
    return all(done.get(partition, 0) >= end for partition, end in ends.items())


async def test_the_next_batch_is_prepared_while_one_is_applied(settings: Settings) -> None:
    await produce(settings, [b"{}"] * RECORDS)
    member = Member(settings, gate_open=False)
    await member.start()
    try:

        async def two_prepared() -> bool:
            return member.handler.prepared >= 2

        await wait_until(two_prepared, timeout=60, interval=0.1)
        assert member.handler.applied == []  # the first batch's effects still wait
        member.handler.gate.set()
        await wait_until(lambda: all_committed(settings), timeout=60, interval=0.1)
    finally:
        await member.close()
    applied = member.handler.applied
    assert sorted(applied) == sorted(set(applied))  # each once: no rebalance, no rereading
    assert len(applied) == RECORDS


async def test_a_batch_fetched_before_a_rebalance_is_read_again(settings: Settings) -> None:
    await produce(settings, [b"{}"] * RECORDS)
    first = Member(settings, gate_open=False)
    await first.start()
    second = Member(settings, gate_open=True)
    try:

        async def waiting_with_the_next_prepared() -> bool:
            return first.handler.prepared >= 2

        await wait_until(waiting_with_the_next_prepared, timeout=60, interval=0.1)
        await second.start()  # a rebalance: the revocation waits for the batch in flight
        await asyncio.sleep(3)  # heartbeats every 0.5 s: the revocation is waiting by now
        first.handler.gate.set()  # the batch in flight commits; the one prepared is dropped
        await wait_until(lambda: all_committed(settings), timeout=60, interval=0.1)
    finally:
        await first.close()
        await second.close()
    applied = set(first.handler.applied) | set(second.handler.applied)
    ends = await high_watermarks(settings, settings.topic_submitted)
    assert applied == {(p, offset) for p, end in ends.items() for offset in range(end)}
    assert first.runner.stats.dropped >= 1
    assert len(second.handler.applied) > 0  # the partitions were shared
