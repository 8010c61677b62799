"""Faults of the services around the workers: PostgreSQL, the dead-letter topic, the counter.

Each test runs the pipeline's real processes (`signatures worker persist|count`), sends
submissions while recording what each sender was told, injects one fault, lets it heal
and the pipeline drain, and then checks the whole delivery promise with
`tests.invariants.check`, the workers' own log files included:

- PostgreSQL connections terminated in the middle of a batch's transaction;
- the PostgreSQL server stopped (fast or immediate) while the workers run, then started
  again: a private throwaway cluster, never the machine's shared server;
- the dead-letter topic unavailable while a poison record waits to be dead-lettered;
- the counter killed between reading non-zero totals and publishing them.

The embedded broker creates any validly named topic the moment a client asks for its
metadata (aiokafka always allows that), and a deleted topic still accepts writes, so the
dead-letter topic is made unavailable with a name the broker refuses; it heals the way an
operator heals it, by correcting the name and restarting the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import TopicPartition

from consumers.errors import is_transient
from runtime.broker import free_port
from runtime.campaigns import counted_rows, create_campaign, read_totals, totals_versions
from runtime.db import apply_migrations, create_pool, database_name
from runtime.kafka import read_to_end
from runtime.offsets import committed_offsets
from runtime.settings import Settings
from runtime.topics import ensure_topics
from runtime.totals_feed import read_published_totals
from schemas.campaign import Confirmation, NewCampaign
from schemas.events import DeadLetterHeaders
from schemas.reasons import Reason
from tests.conftest import make_settings
from tests.helpers import CAMPAIGN, encode, produce, submission, wait_until
from tests.invariants import History, Told, check, lag, uncovered_commits
from tests.pipeline import serving_api
from tests.processes import WorkerProcess, Workers

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

DRAIN_TIMEOUT_S = 150.0
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SECOND = NewCampaign(
    confirmation=Confirmation.OFF, slug="second-cause", title="Second", target="Someone", goal=500
)
SMALL_BATCH = 500  # a backlog of several transactions, so that a fault can land inside one
BUSY_POLL_S = 0.02  # the counter polls the totals all the time: a fault lands mid-query


# --- worker processes -------------------------------------------------------------------


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[Workers]:
    started = Workers(tmp_path)
    try:
        yield started
    finally:
        await started.stop_all()


# --- sending and draining ---------------------------------------------------------------


def people(count: int, *, repeats: int = 0, invalid: int = 0) -> list[dict[str, Any]]:
    """Fresh signers, some of them signing again (upper-cased email), some invalid."""
    fresh = [submission() for _ in range(count)]
    again = [submission(email=p["email"].upper()) for p in fresh[:repeats]]
    return [*fresh, *again, *(submission(country="XX") for _ in range(invalid))]


async def send(settings: Settings, history: History, bodies: list[dict[str, Any]]) -> None:
    """Produce and wait for the broker's acknowledgement; record each as acknowledged."""
    await produce(settings, encode(bodies))
    for body in bodies:
        history.record(body, told=Told.ACKNOWLEDGED, valid=body["country"] != "XX")


async def published_matches_rows(settings: Settings, pool: asyncpg.Pool) -> bool:
    published = await read_published_totals(settings, timeout=30)
    for campaign, rows in (await counted_rows(pool)).items():
        totals = published.get(campaign)
        if rows and (totals is None or totals.total != rows):
            return False
    return True


async def wait_until_drained(settings: Settings, pool: asyncpg.Pool) -> None:
    """Both groups caught up and the published totals equal to COUNT(*)."""
    async with asyncio.timeout(DRAIN_TIMEOUT_S):
        while True:
            if not any((await lag(settings)).values()) and await published_matches_rows(
                settings, pool
            ):
                return
            await asyncio.sleep(0.5)


async def persisted_all(settings: Settings) -> bool:
    """The persist group committed up to the end of the input topic."""
    return (await lag(settings))[settings.persist_group] == 0


async def wait_for_rows(pool: asyncpg.Pool, at_least: int, timeout: float = 90.0) -> None:
    async with asyncio.timeout(timeout):
        while await pool.fetchval("SELECT count(*) FROM signatures") < at_least:
            await asyncio.sleep(0.1)


async def stop_cleanly(*running: WorkerProcess) -> None:
    for worker in running:
        assert worker.running, f"{worker.name} exited with {worker.process.returncode}"
        assert await worker.stop() == 0, f"{worker.name} did not stop cleanly"


# --- 1. connections terminated mid-insert ------------------------------------------------


async def terminate_busy_backends(admin: asyncpg.Connection, database: str) -> int:
    """Terminate the pipeline's connections to the database that are inside a statement
    or a transaction (not the idle ones: the point is to cut a batch in half)."""
    terminated = await admin.fetchval(
        """SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
           FROM pg_stat_activity
           WHERE application_name = 'signatures' AND datname = $1 AND state <> 'idle'""",
        database,
    )
    return int(terminated)


async def test_connections_terminated_mid_insert_are_retried(
    settings: Settings, pool: asyncpg.Pool, database_url: str, workers: Workers
) -> None:
    settings = settings.model_copy(
        update={"batch_max_records": SMALL_BATCH, "totals_poll_s": BUSY_POLL_S}
    )
    await create_campaign(pool, CAMPAIGN)
    history = History()
    persist = await workers.start("persist", "persist", settings)
    count = await workers.start("count", "count", settings)
    await persist.wait_for("partitions_assigned")

    admin = await asyncpg.connect(database_url)
    terminated = 0
    try:
        async with asyncio.timeout(180):
            while len(persist.retries()) < 3:
                await send(settings, history, people(1_500, repeats=30, invalid=3))
                for _ in range(150):  # a few seconds of cutting whatever is running
                    terminated += await terminate_busy_backends(admin, database_name(database_url))
                    await asyncio.sleep(0.02)
    finally:
        await admin.close()

    assert terminated >= 3
    assert persist.running and count.running, "a worker died of a terminated connection"
    await send(settings, history, people(200, repeats=5, invalid=1))  # after the fault
    await wait_until_drained(settings, pool)
    await stop_cleanly(persist, count)
    assert await check(settings, pool, history, logs=workers.logs) == []


# --- 2. the PostgreSQL server stopped and started ----------------------------------------


class PrivatePostgres:
    """A throwaway PostgreSQL 15 cluster on a free port, with its socket in its directory.

    initdb and the server refuse to run as root: then they run as the `postgres` user,
    in a directory of its own under the system's temporary directory (pytest's are
    readable by their owner only).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.server_log = root / "server.log"
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *arguments: str) -> None:
        argv = [os.fspath(PG_BIN / tool), *arguments]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False
        )
        if done.returncode != 0:
            log = (
                self.server_log.read_text(errors="replace")[-2000:]
                if self.server_log.exists()
                else ""
            )
            raise RuntimeError(
                f"{tool} {' '.join(arguments)} failed ({done.returncode}): "
                f"{done.stderr.decode(errors='replace')}\n{log}"
            )

    def create(self) -> None:
        self.sockets.mkdir()
        if os.geteuid() == 0:
            for path in (self.root, self.sockets):
                shutil.chown(path, "postgres", "postgres")
        self._run("initdb", "-D", os.fspath(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "--encoding=UTF8", "--locale=C")  # fmt: skip
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sockets}'\n"
                "fsync = off\n"  # a throwaway cluster: only a crash of the machine would matter
                "shared_buffers = 32MB\n"
                "max_connections = 40\n"
            )

    def start(self) -> None:
        self._run("pg_ctl", "-D", os.fspath(self.data), "-l", os.fspath(self.server_log),
                  "-w", "-t", "90", "start")  # fmt: skip

    def stop(self, mode: str) -> None:
        self._run("pg_ctl", "-D", os.fspath(self.data), "-m", mode, "-w", "-t", "90", "stop")

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    root = Path(tempfile.mkdtemp(prefix="signatures-pg-"))
    cluster = PrivatePostgres(root)
    try:
        cluster.create()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            if cluster.is_running():
                cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def private_database_url(private_postgres: PrivatePostgres) -> AsyncIterator[str]:
    name = f"sigtest_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(private_postgres.admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = private_postgres.url(name)
    await apply_migrations(url)
    yield url
    if not private_postgres.is_running():  # a test that failed during its outage
        await asyncio.to_thread(private_postgres.start)
    admin = await asyncpg.connect(private_postgres.admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def private_pool(private_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(private_database_url, max_size=4)
    try:
        yield created
    finally:
        await created.close()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_workers_outlive_a_database_restart(
    private_postgres: PrivatePostgres,
    private_database_url: str,
    private_pool: asyncpg.Pool,
    kafka_bootstrap: str,
    workers: Workers,
    mode: str,
) -> None:
    settings = make_settings(
        private_database_url,
        kafka_bootstrap,
        batch_max_records=SMALL_BATCH,
        totals_poll_s=BUSY_POLL_S,
    )
    await ensure_topics(settings, kafka_bootstrap)
    await create_campaign(private_pool, CAMPAIGN)
    history = History()
    persist = await workers.start("persist", "persist", settings)
    count = await workers.start("count", "count", settings)
    await persist.wait_for("partitions_assigned")

    await send(settings, history, people(3_000, repeats=50, invalid=5))
    await wait_for_rows(private_pool, 1)  # the backlog is being drained
    await asyncio.to_thread(private_postgres.stop, mode)
    try:
        # The broker still acknowledges submissions while the database is down.
        await send(settings, history, people(500, repeats=10, invalid=2))
        await persist.wait_for_retries(2)
        await asyncio.sleep(2)  # several more attempts against a server that is not there
        assert persist.running and count.running, "a worker died while the database was down"
    finally:
        await asyncio.to_thread(private_postgres.start)

    # Whatever was committed during the outage had been persisted before it.
    assert await uncovered_commits(settings, private_pool) == []
    await send(settings, history, people(200, repeats=5, invalid=1))
    await wait_until_drained(settings, private_pool)
    await stop_cleanly(persist, count)
    assert await check(settings, private_pool, history, logs=workers.logs) == []


async def query_until_stopped(pool: asyncpg.Pool, stop: asyncio.Event) -> list[BaseException]:
    """The workers' kinds of queries, back to back; every error they raise, collected."""
    errors: list[BaseException] = []
    while not stop.is_set():
        try:
            await totals_versions(pool)
            async with pool.acquire() as conn, conn.transaction():
                await conn.fetchval("SELECT count(*) FROM signatures")
        except Exception as exc:  # noqa: BLE001 - classified below, by the product's policy
            errors.append(exc)
            await asyncio.sleep(0.01)
    return errors


async def test_every_error_of_a_database_restart_is_transient(
    private_postgres: PrivatePostgres, private_pool: asyncpg.Pool
) -> None:
    """What a restart throws at busy pooled connections, whatever the timing, is retried.

    The workers' processes show the consequences (a worker that exits); this shows the
    cause, with enough queries in flight that the rare timings are hit too.
    """
    stop = asyncio.Event()
    hammers = [asyncio.create_task(query_until_stopped(private_pool, stop)) for _ in range(6)]
    try:
        for mode in ("fast", "immediate") * 4:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(private_postgres.stop, mode)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(private_postgres.start)
    finally:
        stop.set()
        errors = [e for hammer in await asyncio.gather(*hammers) for e in hammer]
    assert errors, "the restarts did not reach the queries"
    assert sorted({type(e).__name__ for e in errors if not is_transient(e)}) == []
    assert await totals_versions(private_pool) == {}  # and the pool is usable again


# --- 3. the dead-letter topic unavailable -------------------------------------------------


async def find_record(settings: Settings, value: bytes) -> tuple[TopicPartition, int]:
    """Where a record with this value sits on the input topic."""
    for record in await read_to_end(settings, settings.topic_submitted, timeout=30):
        if record.value == value:
            return TopicPartition(record.topic, record.partition), int(record.offset)
    raise AssertionError("record not found on the input topic")


async def test_poison_record_waits_for_the_dead_letter_topic(
    settings: Settings, pool: asyncpg.Pool, workers: Workers
) -> None:
    await create_campaign(pool, CAMPAIGN)
    history = History()
    unavailable = settings.model_copy(update={"topic_rejected": f"dead letters {uuid.uuid4()}"})
    persist = await workers.start("persist", "persist-unavailable-dlq", unavailable)
    count = await workers.start("count", "count", settings)
    await persist.wait_for("partitions_assigned")

    before = people(40, repeats=3)
    await send(settings, history, before)  # no dead letter needed: these go through
    await wait_for_rows(pool, 40)

    poison = b'{"submission_id": "not json'
    await produce(settings, [poison])
    after = people(60, repeats=4)
    await send(settings, history, after)
    where, poison_offset = await find_record(settings, poison)

    await persist.wait_for_retries(2, timeout=120)  # each waits ~10 s for the topic
    assert persist.running
    committed = await committed_offsets(settings, settings.persist_group, settings.topic_submitted)
    assert committed[where.partition] <= poison_offset, (
        "committed past a record it could not dead-letter"
    )
    assert await uncovered_commits(settings, pool) == []
    assert await read_to_end(settings, settings.topic_rejected, timeout=30) == []
    assert await persist.stop() == 0  # stopping while the batch keeps failing is clean

    # The operator corrects the topic: the poison record is dead-lettered, nothing is lost.
    fixed = await workers.start("persist", "persist", settings)
    await wait_until_drained(settings, pool)
    await stop_cleanly(fixed, count)
    dead = [
        DeadLetterHeaders.from_kafka(list(r.headers))
        for r in await read_to_end(settings, settings.topic_rejected, timeout=30)
        if r.value == poison
    ]
    assert {(d.reason, d.origin_partition, d.origin_offset) for d in dead} == {
        (Reason.MALFORMED_JSON, where.partition, poison_offset)
    }
    stored = {
        str(r["submission_id"]) for r in await pool.fetch("SELECT submission_id FROM signatures")
    }
    assert {body["submission_id"] for body in after[4:60]} <= stored  # not repeated
    assert await check(settings, pool, history, logs=workers.logs) == []


# --- 4. the counter killed between reading and publishing ----------------------------------


async def test_counter_killed_holding_unpublished_totals_publishes_exactly_those(
    settings: Settings, pool: asyncpg.Pool, workers: Workers
) -> None:
    history = History()
    await create_campaign(pool, CAMPAIGN)
    await create_campaign(pool, SECOND)
    persist = await workers.start("persist", "persist", settings)
    await send(settings, history, people(300, repeats=20, invalid=2))
    await send(settings, history, [submission(campaign=SECOND.slug) for _ in range(120)])
    await wait_until(lambda: persisted_all(settings), timeout=DRAIN_TIMEOUT_S)

    # What the database holds, committed and not yet published by anyone.
    slugs = [CAMPAIGN.slug, SECOND.slug]
    held = await read_totals(pool, slugs, min_count=settings.public_min_count)
    assert {t.campaign: t.total for t in held} == {CAMPAIGN.slug: 300, SECOND.slug: 120}
    assert await read_to_end(settings, settings.topic_totals, timeout=30) == []

    # The counter reads them and dies at the failpoint between reading and publishing.
    doomed = await workers.start(
        "count", "count-killed", settings, failpoints="count.before_publish=kill"
    )
    assert await doomed.exit_code(timeout=90) == -signal.SIGKILL
    [fired] = doomed.lines("failpoint")
    assert (fired["name"], fired["action"]) == ("count.before_publish", "kill")
    assert await read_to_end(settings, settings.topic_totals, timeout=30) == []
    # Nothing moved while it held them: the totals it died holding are these.
    assert await read_totals(pool, slugs, min_count=settings.public_min_count) == held

    # Restarted, the counter publishes exactly those totals, per campaign.
    fresh = await workers.start("count", "count", settings)

    async def both_published() -> bool:
        return set(await read_published_totals(settings)) == set(slugs)

    await wait_until(both_published, timeout=DRAIN_TIMEOUT_S)
    assert await read_published_totals(settings) == {t.campaign: t for t in held}

    await send(settings, history, people(200, repeats=10, invalid=1))
    await wait_until_drained(settings, pool)
    await stop_cleanly(persist, fresh)
    duplicates = "SELECT duplicates FROM campaign_totals WHERE campaign = $1"
    assert await pool.fetchval(duplicates, CAMPAIGN.slug) == 30
    assert await check(settings, pool, history, logs=workers.logs) == []


async def test_counter_whose_safety_net_fails_stops_loudly(
    settings: Settings, pool: asyncpg.Pool, workers: Workers
) -> None:
    """A bug in the totals poll must not leave a counter running without it."""
    counter = await workers.start(
        "count", "count-broken-poll", settings, failpoints="count.before_publish=raise"
    )
    await counter.wait_for("partitions_assigned")
    await create_campaign(pool, CAMPAIGN)  # the next poll finds a version to publish
    assert await counter.exit_code(timeout=60) == 1
    assert counter.lines("totals_poll_died")


async def test_api_is_not_ready_while_the_database_is_down(
    private_postgres: PrivatePostgres, private_database_url: str, kafka_bootstrap: str
) -> None:
    settings = make_settings(private_database_url, kafka_bootstrap)
    await ensure_topics(settings, kafka_bootstrap)
    async with serving_api(settings) as api:

        async def get(path: str) -> httpx.Response:
            async with httpx.AsyncClient(base_url=api, timeout=10) as client:
                return await client.get(path)

        assert (await get("/readyz")).status_code == 200
        await asyncio.to_thread(private_postgres.stop, "fast")
        try:
            down = await get("/readyz")
            assert down.status_code == 503
            assert down.json()["checks"] == {"database": "unreachable", "broker": "ok"}
            assert (await get("/healthz")).status_code == 200  # alive, just not ready
        finally:
            await asyncio.to_thread(private_postgres.start)
        async with asyncio.timeout(30):  # the pool reconnects by itself
            while (await get("/readyz")).status_code != 200:
                await asyncio.sleep(0.5)
