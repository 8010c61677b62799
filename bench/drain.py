"""Backlog drain: the whole data set waiting on the topic, then the workers start.

Cold: from launching the worker processes until the backlog is committed and the published
total equals COUNT(*). Steady: from the moment the consumer group is stable with every
worker in it (joins and rebalances over) until drained, counting only what was committed
in that window.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from asyncio.subprocess import Process
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.data import CAMPAIGN, DataSet, prepare, produce_backlog
from consumers.service import MEASURE_WITHOUT_ENCRYPTION
from runtime.campaigns import counted_rows
from runtime.db import create_pool
from runtime.kafka import client_options, make_consumer, read_to_end
from runtime.settings import Settings, settings_env
from runtime.totals_feed import read_published_totals
from schemas.campaign import Confirmation
from schemas.events import DeadLetterHeaders

Origin = tuple[str, int, int]  # topic, partition, offset of a submitted record


@dataclass
class DrainResult:
    count: int
    workers: int
    cold_seconds: float
    steady_seconds: float
    steady_records: int
    first_join_seconds: float
    peak_rss_mb: float
    rows: int  # counted (confirmed) rows
    published_total: int
    cpu_seconds: dict[str, float]
    outcome: Outcome  # where every message of the backlog ended

    @property
    def conserved(self) -> bool:
        """Every message ended as a row, a counted duplicate or a dead letter: none lost."""
        return self.outcome.accounted == self.count

    @property
    def steady_per_s(self) -> float:
        return self.steady_records / self.steady_seconds if self.steady_seconds else 0.0

    @property
    def totals_match(self) -> bool:
        return self.rows == self.published_total


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_by_component(workers: list[int], counter: int) -> dict[str, float]:
    """CPU seconds used so far by the persist workers, the counter, PostgreSQL and the broker."""
    ticks = os.sysconf("SC_CLK_TCK")
    usage: dict[str, float] = {
        "persist workers": 0.0,
        "counter": 0.0,
        "postgres": 0.0,
        "broker": 0.0,
    }
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / ticks
        pid = int(entry.name)
        if pid in workers:
            usage["persist workers"] += seconds
        elif pid == counter:
            usage["counter"] += seconds
        elif comm.startswith("postgres"):
            usage["postgres"] += seconds
        elif comm.startswith("tansu"):
            usage["broker"] += seconds
    return usage


async def _group_stable(settings: Settings, members: int) -> bool:
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([settings.persist_group])
        group = response.groups[0]
        return bool(group[2] == "Stable" and len(group[5]) == members)
    finally:
        await admin.close()


async def start_workers(
    settings: Settings, workers: int, log_dir: Path, extra_env: dict[str, str] | None = None
) -> list[Process]:
    """`workers` persist processes and one counter, as an operator would run them."""
    env = {**os.environ, **settings_env(settings), "SIGNATURES_LOG_FORMAT": "json"}
    env.update(extra_env or {})
    processes = []
    for n, kind in enumerate(["persist"] * workers + ["count"]):
        with (log_dir / f"bench-{kind}-{n}.log").open("ab") as log:
            processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "cli",
                    "worker",
                    kind,
                    env=env,
                    stdout=log,
                    stderr=log,
                    stdin=asyncio.subprocess.DEVNULL,
                )
            )
    return processes


async def stop_processes(processes: list[Process]) -> None:
    for process in processes:
        if process.returncode is None:
            process.terminate()
    for process in processes:
        await process.wait()


async def wait_published(settings: Settings, deadline: float) -> tuple[int, int]:
    """COUNT(*) of the campaign, and its published total once they agree (or at deadline)."""
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        rows = (await counted_rows(pool))[CAMPAIGN.slug]
    finally:
        await pool.close()
    published = -1
    while time.perf_counter() < deadline:
        found = (await read_published_totals(settings)).get(CAMPAIGN.slug)
        published = found.total if found else -1
        if published == rows:
            break
        await asyncio.sleep(0.1)
    return rows, published


@dataclass(frozen=True)
class Outcome:
    """Where the messages of one topic ended: stored rows (any state), counted duplicates,
    dead letters (each message once, however often it was dead-lettered)."""

    stored: int
    duplicates: int
    dead_lettered: int
    dead_letter_records: int  # records on the dead-letter topic, repeats included

    @property
    def accounted(self) -> int:
        return self.stored + self.duplicates + self.dead_lettered


def dead_letter_origins(records: Iterable[ConsumerRecord[Any, Any]], topic: str) -> set[Origin]:
    """The distinct messages of `topic` that were dead-lettered: a message dead-lettered
    twice (a worker that died after producing, before committing) is one message, known by
    where it came from, not by where its dead letters landed."""
    origins = set()
    for record in records:
        headers = DeadLetterHeaders.from_kafka(list(record.headers))
        if headers.origin_topic == topic:
            origins.add((headers.origin_topic, headers.origin_partition, headers.origin_offset))
    return origins


async def outcome(settings: Settings) -> Outcome:
    """Rows (in any state), counted duplicates and dead letters of the input topic."""
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        rows = await pool.fetchval("SELECT count(*) FROM signatures")
        duplicates = await pool.fetchval("SELECT count(*) FROM duplicate_submissions")
    finally:
        await pool.close()
    dead = await read_to_end(settings, settings.topic_rejected, timeout=60)
    origins = dead_letter_origins(dead, settings.topic_submitted)
    return Outcome(int(rows), int(duplicates), len(origins), len(dead))


async def run_drain(
    settings: Settings,
    data: DataSet,
    workers: int,
    log_dir: Path,
    timeout: float = 600,
    confirmation: Confirmation = Confirmation.OFF,
    encrypted: bool = True,
) -> DrainResult:
    """Steady state starts at the first batch committed once every worker is in the group.

    On a campaign whose confirmation is `required`, every new signature is stored pending
    (and counts nowhere until confirmed): the published total stays 0, which it must.
    Not `encrypted` (to measure what encryption costs, nothing else): the persist workers
    store the names, email and postcode in blobs of the same size, not encrypted
    (consumers/service.py MEASURE_WITHOUT_ENCRYPTION); the database is dropped after.
    """
    await prepare(settings, confirmation)
    ends = await produce_backlog(settings, data)
    total = sum(ends.values())
    tps = [TopicPartition(settings.topic_submitted, p) for p in sorted(ends)]
    launched = time.perf_counter()
    deadline = launched + timeout
    extra = None if encrypted else {MEASURE_WITHOUT_ENCRYPTION: "1"}
    processes = await start_workers(settings, workers, log_dir, extra)
    pids = [p.pid for p in processes[:workers]]
    counter_pid = processes[-1].pid
    watcher = make_consumer(settings, settings.persist_group)
    await watcher.start()
    first_commit = steady_from = 0.0
    stable = False
    committed_at_start = 0
    peak = 0.0
    cpu_start: dict[str, float] = {}
    try:
        while True:
            committed = sum([await watcher.committed(tp) or 0 for tp in tps])
            now = time.perf_counter()
            first_commit = first_commit or (now if committed else 0.0)
            stable = stable or await _group_stable(settings, workers)
            if stable and not steady_from and committed:
                steady_from, committed_at_start = now, committed
                cpu_start = cpu_by_component(pids, counter_pid)
            peak = max([peak, *(peak_rss_mb(pid) for pid in pids)])
            if committed >= total:
                break
            if now > deadline:
                raise TimeoutError(f"not drained after {timeout:.0f}s ({committed}/{total})")
            await asyncio.sleep(0.05)
        drained = time.perf_counter()
        if not steady_from or committed_at_start >= total:
            raise RuntimeError(
                "no steady state to measure: the backlog was drained before every worker "
                "was in the group; raise --count"
            )
        cpu_end = cpu_by_component(pids, counter_pid)
        rows, published = await wait_published(settings, deadline)
        ended = await outcome(settings)
        done = time.perf_counter()
    finally:
        await watcher.stop()
        await stop_processes(processes)
    return DrainResult(
        count=total,
        workers=workers,
        cold_seconds=done - launched,
        steady_seconds=drained - steady_from,
        steady_records=total - committed_at_start,
        first_join_seconds=first_commit - launched,
        peak_rss_mb=peak,
        rows=rows,
        published_total=published,
        cpu_seconds={k: round(cpu_end[k] - cpu_start.get(k, 0.0), 2) for k in cpu_end},
        outcome=ended,
    )
