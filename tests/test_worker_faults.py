"""Worker lifecycle faults, on real worker processes and real signals.

Each test runs `signatures worker persist|count` as processes, sends submissions while
recording what each sender was told, injects one fault (SIGTERM mid-batch, SIGTERM while
the database is blocked, a SIGSTOPped consumer evicted from its group, rebalances under
load, redelivery, a full replay, a new group on a backlog), lets the pipeline drain and
checks the whole delivery promise with `tests.invariants.check`, the workers' own log
files included.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import TopicPartition

from bench.drain import peak_rss_mb
from runtime.campaigns import counted_rows, create_campaign, read_totals
from runtime.kafka import make_consumer, make_producer
from runtime.offsets import committed_offsets, high_watermarks
from runtime.settings import Settings
from runtime.totals_feed import read_published_totals
from tests.helpers import CAMPAIGN, encode, produce, submission, wait_until
from tests.invariants import History, Told, check, lag, uncovered_commits
from tests.processes import JOIN_TIMEOUT_S, WorkerProcess, Workers
from tests.test_failpoints import process_state

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

RUNNER = "consumers.runner"  # the consume loop's log lines: batches, commits, assignments


async def is_frozen(worker: WorkerProcess) -> bool:
    """Stopped by SIGSTOP (state T)."""
    return process_state(worker.process.pid) == "T"


@pytest.fixture
async def workers(settings: Settings, tmp_path: Path) -> AsyncIterator[Workers]:
    started = Workers(tmp_path, settings)
    try:
        yield started
    finally:
        await started.stop_all()


async def send(settings: Settings, history: History, bodies: list[dict[str, Any]]) -> None:
    """Produce the submissions; each one the broker acknowledged goes into the history."""
    await produce(settings, encode(bodies))
    for body in bodies:
        history.record(body, told=Told.ACKNOWLEDGED)


async def nothing_left(settings: Settings) -> bool:
    """Both groups committed up to the end of their topics."""
    return not any((await lag(settings)).values())


async def persisted_all(settings: Settings) -> bool:
    """The persist group committed up to the end of the input topic."""
    return (await lag(settings))[settings.persist_group] == 0


async def persisted_offsets(settings: Settings) -> dict[int, int]:
    return await committed_offsets(settings, settings.persist_group, settings.topic_submitted)


def batch_ends(worker: WorkerProcess) -> dict[int, int]:
    """The offset after the last record of each partition in the worker's batch lines."""
    ends: dict[int, int] = {}
    for line in worker.lines("batch"):
        for partition, (_, last) in line["partitions"].items():
            ends[int(partition)] = max(ends.get(int(partition), 0), last + 1)
    return ends


def first_offsets(worker: WorkerProcess) -> dict[int, int]:
    """The first offset each partition's first batch started from."""
    firsts: dict[int, int] = {}
    for line in worker.lines("batch"):
        for partition, (first, _) in line["partitions"].items():
            firsts.setdefault(int(partition), first)
    return firsts


@dataclass(frozen=True)
class Handled:
    """One partition's share of a batch line: which offsets, by whom, and if committed."""

    worker: str
    first: int
    last: int
    committed: bool


Log = list[dict[str, Any]]


def logged(*members: WorkerProcess) -> dict[str, Log]:
    return {member.name: member.lines() for member in members}


def handling_problems(
    ends: dict[int, int], logs: dict[str, Log], killed: Iterable[str] = ()
) -> list[str]:
    """Every record handled by some batch; no two committed batches handled the same one.

    Redelivery is expected only where a commit never happened: after a kill, or a commit
    refused because the partitions had moved. A clean stop or a rebalance hands the
    partition over exactly where the last committed batch ended.
    """
    by_partition: dict[int, list[Handled]] = {p: [] for p in ends}
    for name, lines in logs.items():
        for partition, batch in batches_of(name, lines, unsure_of_last=name in set(killed)):
            by_partition.setdefault(partition, []).append(batch)
    problems = []
    for partition, batches in sorted(by_partition.items()):
        covered: set[int] = set()
        committed: dict[int, str] = {}
        for batch in batches:
            offsets = range(batch.first, batch.last + 1)
            covered.update(offsets)
            if not batch.committed:
                continue
            again = [o for o in offsets if o in committed]
            if again:
                problems.append(
                    f"partition {partition}: {len(again)} records committed by "
                    f"{committed[again[0]]} handled again by {batch.worker}"
                )
            committed.update(dict.fromkeys(offsets, batch.worker))
        missing = set(range(ends.get(partition, 0))) - covered
        if missing:
            problems.append(f"partition {partition}: {len(missing)} records never handled")
    return problems


def batches_of(name: str, lines: Log, *, unsure_of_last: bool) -> list[tuple[int, Handled]]:
    """A worker's batches, per partition, as its log tells.

    A batch is committed unless the consume loop's next line says the commit failed, or it
    is the last batch of a worker that was killed (it may have died before committing).
    """
    batches = [i for i, line in enumerate(lines) if line.get("event") == "batch"]
    found = []
    for i in batches:
        after = [line["event"] for line in lines[i + 1 :] if line.get("component") == RUNNER]
        refused = bool(after) and str(after[0]).startswith("commit_failed")
        unsure = unsure_of_last and i == batches[-1]
        for partition, (first, last) in lines[i]["partitions"].items():
            found.append((int(partition), Handled(name, first, last, not (refused or unsure))))
    return found


def test_handling_problems_name_gaps_and_committed_work_done_twice() -> None:
    def batch(partitions: dict[str, list[int]]) -> dict[str, Any]:
        return {"event": "batch", "component": RUNNER, "partitions": partitions}

    refused = {"event": "commit_failed_after_rebalance", "component": RUNNER}
    ends = {0: 10, 1: 4}
    clean = {"a": [batch({"0": [0, 4], "1": [0, 3]})], "b": [batch({"0": [5, 9]})]}
    assert handling_problems(ends, clean) == []
    # A refused commit, or a killed worker's last batch, may be done again.
    redone = {"a": [batch({"0": [0, 6]}), refused], "b": [batch({"0": [0, 9], "1": [0, 3]})]}
    assert handling_problems(ends, redone) == []
    killed = {"a": [batch({"0": [0, 6]})], "b": [batch({"0": [0, 9], "1": [0, 3]})]}
    assert handling_problems(ends, killed, killed=["a"]) == []
    assert handling_problems(ends, killed) == [
        "partition 0: 7 records committed by a handled again by b"
    ]
    gap = {"a": [batch({"0": [0, 4], "1": [0, 3]}), batch({"0": [6, 9]})]}
    assert handling_problems(ends, gap) == ["partition 0: 1 records never handled"]


async def input_ends(settings: Settings) -> dict[int, int]:
    return await high_watermarks(settings, settings.topic_submitted)


async def rows(pool: asyncpg.Pool) -> int:
    return (await counted_rows(pool)).get(CAMPAIGN.slug, 0)


async def test_sigterm_mid_batch_finishes_the_batch_and_commits(
    settings: Settings, pool: asyncpg.Pool, workers: Workers
) -> None:
    await create_campaign(pool, CAMPAIGN)
    history = History()
    await send(settings, history, [submission() for _ in range(300)])

    # The worker freezes inside its first batch's open transaction; SIGTERM reaches it
    # there, and it carries on when continued: the signal lands mid-batch, whatever the
    # machine's speed.
    worker = await workers.start(
        "persist", "persist-1", failpoints="persist.before_db_commit=1*stop"
    )
    await worker.wait_for("failpoint")
    await wait_until(lambda: is_frozen(worker), timeout=30, interval=0.05)
    worker.signal(signal.SIGTERM)
    worker.signal(signal.SIGCONT)

    assert await worker.exit_code() == 0
    events = worker.events()
    assert events.count("batch") == 1
    assert "grace_period_over" not in events
    # The signal arrived during the batch, which then finished and was committed.
    assert events.index("failpoint") < events.index("stopping") < events.index("batch")
    [stopped] = worker.lines("worker_stopped")
    assert stopped["batches"] == 1
    finished = worker.outcome("inserted")
    assert finished > 0
    assert await rows(pool) == finished
    committed = await persisted_offsets(settings)
    for partition, end in batch_ends(worker).items():
        assert committed[partition] == end
    assert await uncovered_commits(settings, pool) == []

    await send(settings, history, [submission() for _ in range(200)])
    restarted = await workers.run_to_drain("persist", "persist-2")
    assert restarted.outcome("redelivered") == 0  # nothing finished is done again
    assert restarted.outcome("inserted") == 500 - finished
    await workers.run_to_drain("count", "count-1")

    assert await rows(pool) == 500
    assert handling_problems(await input_ends(settings), logged(worker, restarted)) == []
    assert await check(settings, pool, history, logs=workers.logs) == []


async def blocked_on_a_lock(pool: asyncpg.Pool) -> bool:
    """Some worker's statement waits for a lock (the test's lock on `signatures`)."""
    waiting = await pool.fetchval(
        """SELECT count(*) FROM pg_stat_activity
           WHERE datname = current_database() AND application_name = 'signatures'
             AND wait_event_type = 'Lock' AND query ILIKE '%INSERT INTO signatures%'"""
    )
    return bool(waiting)


async def test_sigterm_while_the_database_is_blocked_commits_nothing_unpersisted(
    settings: Settings, pool: asyncpg.Pool, workers: Workers
) -> None:
    await create_campaign(pool, CAMPAIGN)
    history = History()
    await send(settings, history, [submission() for _ in range(200)])

    lock_holder = await pool.acquire()
    lock = lock_holder.transaction()
    await lock.start()
    try:
        await lock_holder.execute("LOCK TABLE signatures IN ACCESS EXCLUSIVE MODE")
        worker = await workers.start("persist", "persist-1")
        await wait_until(lambda: blocked_on_a_lock(pool), timeout=JOIN_TIMEOUT_S, interval=0.2)
        worker.signal(signal.SIGTERM)

        # Within the grace period plus a little (generous: the machine is busy), the worker
        # gives up the stuck batch: it is cancelled, rolled back and left uncommitted.
        code = await worker.exit_code(timeout=settings.shutdown_grace_s + 30)
        # Today the service treats that as a clean stop and exits 0: the abandoned batch is
        # safe (redelivered to the next owner), and SIGTERM asked for the stop.
        assert code == 0
        events = worker.events()
        assert "grace_period_over" in events
        assert "batch" not in events
        assert await lock_holder.fetchval("SELECT count(*) FROM signatures") == 0
    finally:
        await lock.rollback()
        await pool.release(lock_holder)

    assert set((await persisted_offsets(settings)).values()) == {0}
    assert await uncovered_commits(settings, pool) == []

    fresh = await workers.run_to_drain("persist", "persist-2")
    assert (fresh.outcome("inserted"), fresh.outcome("redelivered")) == (200, 0)
    await workers.run_to_drain("count", "count-1")
    assert await check(settings, pool, history, logs=workers.logs) == []


def owns_all_partitions_between(settings: Settings, *members: WorkerProcess) -> bool:
    """Each member owns some partitions, no two the same, together all of them."""
    owned = [member.assigned() for member in members]
    together = set().union(*owned)
    return (
        all(owned)
        and sum(len(o) for o in owned) == len(together)
        and together == set(range(settings.partitions))
    )


async def test_a_paused_consumer_evicted_from_its_group_changes_nothing_when_it_wakes(
    settings: Settings, pool: asyncpg.Pool, workers: Workers
) -> None:
    await create_campaign(pool, CAMPAIGN)
    history = History()
    # The zombie-to-be freezes (SIGSTOP) once, right after its first database commit: its
    # batch is stored, its accepted events and offsets are not yet.
    zombie = await workers.start(
        "persist", "persist-zombie", failpoints="persist.after_db_commit=1*stop"
    )
    other = await workers.start("persist", "persist-other")
    await workers.start("count", "count")

    async def settled() -> bool:
        return owns_all_partitions_between(settings, zombie, other)

    await wait_until(settled, timeout=JOIN_TIMEOUT_S, interval=0.2)
    shared = other.mark()
    await send(settings, history, [submission() for _ in range(300)])
    await zombie.wait_for("failpoint")
    await wait_until(lambda: is_frozen(zombie), timeout=30, interval=0.05)
    assert "batch" not in zombie.events()  # stopped inside its batch

    # Its session times out and the other member takes every partition over.
    await other.wait_for(
        "partitions_assigned",
        lambda line: len(line["partitions"]) == settings.partitions,
        since=shared,
    )
    await send(settings, history, [submission() for _ in range(300)])

    await wait_until(lambda: persisted_all(settings), timeout=JOIN_TIMEOUT_S)
    before_wake = await persisted_offsets(settings)
    assert await rows(pool) == 600
    assert other.outcome("redelivered") > 0  # the zombie's stored batch, done again harmlessly
    assert await uncovered_commits(settings, pool) == []

    zombie.signal(signal.SIGCONT)
    # Its late batch finishes, but its offset commit is refused (its membership expired);
    # it rejoins the group and gets partitions again.
    woke = zombie.mark()
    late = await zombie.wait_for("batch", since=woke)
    await zombie.wait_for("commit_failed_after_rebalance", since=woke)
    await zombie.wait_for("partitions_assigned", lambda line: bool(line["partitions"]), since=woke)
    assert late["inserted"] == other.outcome("redelivered")  # what it stored, redone once
    after_wake = await persisted_offsets(settings)
    assert all(after_wake[p] >= offset for p, offset in before_wake.items())  # never back
    assert await uncovered_commits(settings, pool) == []

    # Both members work on; then everything drains and they stop cleanly.
    await send(settings, history, [submission() for _ in range(100)])
    await wait_until(lambda: nothing_left(settings), timeout=JOIN_TIMEOUT_S)
    for member in (zombie, other):
        member.signal(signal.SIGTERM)
        assert await member.exit_code() == 0
    assert await rows(pool) == 700
    assert handling_problems(await input_ends(settings), logged(zombie, other)) == []
    assert await check(settings, pool, history, logs=workers.logs) == []


class Sender:
    """Submissions sent in small acknowledged chunks until stopped: a steady stream.

    About one in twenty is the same person again (the email in upper case, a new id) and
    one in fifty is invalid (an unknown country), so dedupe and dead letters work under
    the rebalances too.
    """

    def __init__(self, settings: Settings, history: History) -> None:
        self._settings = settings
        self._history = history
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._emails: list[str] = []
        self.chunks = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    def _chunk(self, size: int) -> list[tuple[dict[str, Any], bool]]:
        chunk: list[tuple[dict[str, Any], bool]] = []
        for _ in range(size):
            n = len(self._history.sent) + len(chunk)
            if n % 20 == 19 and self._emails:
                again = self._emails[n % len(self._emails)].upper()
                chunk.append((submission(email=again), True))
            elif n % 50 == 49:
                chunk.append((submission(country="XX"), False))
            else:
                body = submission()
                self._emails.append(body["email"])
                chunk.append((body, True))
        return chunk

    async def _run(self) -> None:
        while not self._stop.is_set():
            chunk = self._chunk(25)
            await produce(self._settings, encode([body for body, _ in chunk]))
            for body, valid in chunk:
                self._history.record(body, told=Told.ACKNOWLEDGED, valid=valid)
            self.chunks += 1
            await asyncio.sleep(0.2)


async def test_repeated_rebalances_under_load_keep_the_promise(
    settings: Settings, pool: asyncpg.Pool, workers: Workers
) -> None:
    await create_campaign(pool, CAMPAIGN)
    history = History()
    sender = Sender(settings, history)
    # Every batch holds its transaction open a little: signals and rebalances find batches
    # in flight, which must finish and commit before their partitions move.
    slow = "persist.before_db_commit=sleep:0.3"
    await workers.start("count", "count")
    first = await workers.start("persist", "persist-1", failpoints=slow)
    second = await workers.start("persist", "persist-2", failpoints=slow)
    sender.start()
    try:

        async def joined(member: WorkerProcess) -> None:
            await member.wait_for("partitions_assigned", lambda line: bool(line["partitions"]))
            await member.wait_for("batch")

        await joined(first)
        await joined(second)
        third = await workers.start("persist", "persist-3", failpoints=slow)  # 2 become 3
        await joined(third)
        first.signal(signal.SIGTERM)  # one leaves cleanly
        assert await first.exit_code() == 0
        # One joins and dies inside its first batch's open transaction, without leaving:
        # the failpoint itself kills it there, before COMMIT, whatever the machine's pace.
        doomed = await workers.start(
            "persist", "persist-doomed", failpoints="persist.before_db_commit=kill"
        )
        assert await doomed.exit_code(timeout=JOIN_TIMEOUT_S) == -signal.SIGKILL
        assert doomed.lines("partitions_assigned")[-1]["partitions"]  # it held some
        [fired] = doomed.lines("failpoint")
        assert (fired["name"], fired["action"]) == ("persist.before_db_commit", "kill")
        assert doomed.lines("batch") == []
        fourth = await workers.start("persist", "persist-4", failpoints=slow)  # one joins
        await joined(fourth)
        mark = fourth.mark()
        for leaving in (third, second):
            leaving.signal(signal.SIGTERM)
            assert await leaving.exit_code() == 0
        await fourth.wait_for(
            "partitions_assigned",
            lambda line: len(line["partitions"]) == settings.partitions,
            since=mark,
        )
    finally:
        await sender.stop()

    await wait_until(lambda: nothing_left(settings), timeout=JOIN_TIMEOUT_S)
    for member in workers.started:
        if member.process.returncode is None:  # memory stayed bounded through it all
            assert peak_rss_mb(member.process.pid) < 250, member.name
            member.signal(signal.SIGTERM)
            assert await member.exit_code() == 0
    assert sender.chunks >= 10
    assert len(history.sent) == 25 * sender.chunks
    logs = logged(first, second, third, doomed, fourth)
    assert all(
        any(line["event"] == "batch" for line in log)
        for name, log in logs.items()
        if name != doomed.name
    )
    assert handling_problems(await input_ends(settings), logs, killed=[doomed.name]) == []
    # The batch the doomed worker held was never stored: whoever took its partition over
    # stored it as new. Rows found already stored come only from refused commits.
    refused = [
        batch.last - batch.first + 1
        for name, lines in logs.items()
        for _, batch in batches_of(name, lines, unsure_of_last=False)
        if not batch.committed
    ]
    redelivered = sum(member.outcome("redelivered") for member in (first, second, third, fourth))
    assert redelivered <= sum(refused), (redelivered, refused)
    assert await check(settings, pool, history, logs=workers.logs) == []


async def produce_keyed(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    """Produce (key, value) records in this order and wait for all their acknowledgements."""
    producer = make_producer(settings)
    await producer.start()
    try:
        futures = [
            await producer.send(settings.topic_submitted, key=key, value=value)
            for key, value in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def rewind_group(settings: Settings, group: str, topic: str) -> None:
    """Commit offset 0 on every partition for a group without members (an operator's reset)."""
    consumer = make_consumer(settings, group)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await high_watermarks(settings, topic)]
        consumer.assign(tps)
        await consumer.commit(dict.fromkeys(tps, 0))
    finally:
        await consumer.stop()


async def test_a_record_delivered_twice_is_counted_once(
    settings: Settings, pool: asyncpg.Pool, workers: Workers
) -> None:
    await create_campaign(pool, CAMPAIGN)
    history = History()
    bodies = [submission() for _ in range(100)]
    keyed = [(uuid.UUID(body["submission_id"]).bytes, json.dumps(body).encode()) for body in bodies]
    # The identical bytes twice in a row (same key, so the same partition), as a producer
    # that retried after a lost acknowledgement sends them.
    await produce_keyed(
        settings, [record for pair in zip(keyed, keyed, strict=True) for record in pair]
    )

    for body in bodies:
        history.record(body, told=Told.ACKNOWLEDGED)

    first = await workers.run_to_drain("persist", "persist-1")
    assert first.outcome("inserted") == 100
    assert first.outcome("duplicates") == 0  # the same submission is not a second signer
    [counted] = await read_totals(pool, [CAMPAIGN.slug])
    assert counted.total == 100

    # The same bytes once more, later (another batch), and then the whole topic again: the
    # group's offsets rewound, as after an operator's reset.
    await produce_keyed(settings, keyed)
    again = await workers.run_to_drain("persist", "persist-2")
    assert (again.outcome("inserted"), again.outcome("redelivered")) == (0, 100)
    await rewind_group(settings, settings.persist_group, settings.topic_submitted)
    assert set((await persisted_offsets(settings)).values()) == {0}
    replayed = await workers.run_to_drain("persist", "persist-3")
    assert replayed.outcome("inserted") == 0
    assert replayed.outcome("redelivered") >= 100
    assert (
        sum(
            len(range(a, b + 1))
            for line in replayed.lines("batch")
            for a, b in line["partitions"].values()
        )
        == 300
    )

    await workers.run_to_drain("count", "count")
    [after] = await read_totals(pool, [CAMPAIGN.slug])
    assert (after.total, after.version) == (100, counted.version)
    assert await pool.fetchval("SELECT count(*) FROM duplicate_submissions") == 0
    assert await check(settings, pool, history, logs=workers.logs) == []


async def test_a_full_replay_with_a_new_group_changes_no_row_and_no_total(
    settings: Settings, pool: asyncpg.Pool, workers: Workers
) -> None:
    await create_campaign(pool, CAMPAIGN)
    history = History()
    people = [submission() for _ in range(200)]
    again = [submission(email=p["email"].upper()) for p in people[:10]]
    invalid = [submission(country="XX") for _ in range(5)]
    await send(settings, history, [*people, *again])
    await produce(settings, encode(invalid))
    for body in invalid:
        history.record(body, told=Told.ACKNOWLEDGED, valid=False)
    await workers.run_to_drain("persist", "persist-1")
    await workers.run_to_drain("count", "count-1")
    readers_saw = (await read_published_totals(settings))[CAMPAIGN.slug]
    totals_row = await pool.fetchrow("SELECT total, duplicates, version FROM campaign_totals")
    assert readers_saw.total == 200

    replay = settings.model_copy(update={"persist_group": f"{settings.persist_group}-replay"})
    replayed = await workers.run_to_drain("persist", "persist-replay", settings=replay)
    assert replayed.outcome("inserted") == 0
    assert replayed.outcome("redelivered") == 200
    assert replayed.outcome("dead_lettered") == 5  # rejected again, with the same reasons
    await workers.run_to_drain("count", "count-2")

    assert await rows(pool) == 200
    assert (
        await pool.fetchrow("SELECT total, duplicates, version FROM campaign_totals") == totals_row
    )
    # Readers see the very same totals: the same version, so no new number at all.
    readers_see = (await read_published_totals(settings))[CAMPAIGN.slug]
    assert (readers_see.total, readers_see.version) == (readers_saw.total, readers_saw.version)
    assert await check(settings, pool, history, logs=workers.logs) == []
    assert await check(replay, pool, history) == []


async def test_a_new_group_starts_at_the_backlog(
    settings: Settings, pool: asyncpg.Pool, workers: Workers
) -> None:
    await create_campaign(pool, CAMPAIGN)
    history = History()
    await send(settings, history, [submission() for _ in range(400)])  # before any group

    persist = await workers.start("persist", "persist")
    await persist.wait_for("batch")
    await send(settings, history, [submission() for _ in range(100)])  # while it runs
    await wait_until(lambda: persisted_all(settings), timeout=JOIN_TIMEOUT_S)
    # The counter's group is new too, and its topic already holds every accepted event.
    counter = await workers.start("count", "count")
    await wait_until(lambda: nothing_left(settings), timeout=JOIN_TIMEOUT_S)
    for member in (persist, counter):
        member.signal(signal.SIGTERM)
        assert await member.exit_code() == 0

    # Each partition was read from its very first record, not from where it ended.
    assert first_offsets(persist) == dict.fromkeys(range(settings.partitions), 0)
    assert list(first_offsets(counter).values()) == [0]  # accepted events: keyed by campaign
    assert persist.outcome("inserted") == 500
    assert await check(settings, pool, history, logs=workers.logs) == []
