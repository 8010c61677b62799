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
from dataclasses import dataclass
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.data import CAMPAIGN, DataSet, prepare, produce_backlog
from runtime.campaigns import counted_rows
from runtime.db import create_pool
from runtime.kafka import make_consumer
from runtime.settings import Settings, settings_env
from runtime.totals_feed import read_published_totals


@dataclass
class DrainResult:
    count: int
    workers: int
    cold_seconds: float
    steady_seconds: float
    steady_records: int
    first_join_seconds: float
    peak_rss_mb: float
    rows: int
    published_total: int
    cpu_seconds: dict[str, float]

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
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([settings.persist_group])
        group = response.groups[0]
        return bool(group[2] == "Stable" and len(group[5]) == members)
    finally:
        await admin.close()


async def run_drain(
    settings: Settings, data: DataSet, workers: int, log_dir: Path, timeout: float = 600
) -> DrainResult:
    await prepare(settings)
    ends = await produce_backlog(settings, data)
    total = sum(ends.values())
    tps = [TopicPartition(settings.topic_submitted, p) for p in sorted(ends)]
    env = {**os.environ, **settings_env(settings), "SIGNATURES_LOG_FORMAT": "json"}
    processes = []
    launched = time.perf_counter()
    for n, kind in enumerate(["persist"] * workers + ["count"]):
        log = (log_dir / f"bench-{kind}-{n}.log").open("ab")
        processes.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "runtime.cli",
                "worker",
                kind,
                env=env,
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
            )
        )
        log.close()
    worker_pids = [process.pid for process in processes[:workers]]
    counter_pid = processes[-1].pid
    cpu_at_stable = cpu_by_component(worker_pids, counter_pid)
    watcher = make_consumer(settings, settings.persist_group)
    await watcher.start()
    first_join = stable_at = 0.0
    committed_at_stable = 0
    peak = 0.0
    try:
        deadline = launched + timeout
        while True:
            committed = 0
            for tp in tps:
                committed += await watcher.committed(tp) or 0
            now = time.perf_counter()
            if committed and not first_join:
                first_join = now
            if not stable_at and await _group_stable(settings, workers):
                stable_at, committed_at_stable = now, committed
                cpu_at_stable = cpu_by_component(worker_pids, counter_pid)
            for process in processes[:workers]:
                peak = max(peak, peak_rss_mb(process.pid))
            if committed >= total:
                drained = now
                cpu_at_drained = cpu_by_component(worker_pids, counter_pid)
                break
            if now > deadline:
                raise TimeoutError(
                    f"backlog not drained after {timeout:.0f}s ({committed}/{total})"
                )
            await asyncio.sleep(0.05)
        pool = await create_pool(settings.database_url, max_size=1)
        try:
            rows = (await counted_rows(pool))[CAMPAIGN.slug]
            published = -1
            while time.perf_counter() < deadline:
                found = (await read_published_totals(settings)).get(CAMPAIGN.slug)
                published = found.total if found else -1
                if published == rows:
                    break
                await asyncio.sleep(0.1)
        finally:
            await pool.close()
        done = time.perf_counter()
    finally:
        await watcher.stop()
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            await process.wait()
    if not stable_at:  # one worker: stable once the first batch is committed
        stable_at, committed_at_stable = first_join, 0
    return DrainResult(
        count=total,
        workers=workers,
        cold_seconds=done - launched,
        steady_seconds=drained - stable_at,
        steady_records=total - committed_at_stable,
        first_join_seconds=first_join - launched,
        peak_rss_mb=peak,
        rows=rows,
        published_total=published,
        cpu_seconds={k: cpu_at_drained[k] - cpu_at_stable[k] for k in cpu_at_drained},
    )
