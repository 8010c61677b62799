"""Live totals to a crowd: many stream clients on one API process while signatures arrive.

N clients open `GET /v1/campaigns/{slug}/totals/stream` on one API process; then
signatures are POSTed at a steady rate through the whole pipeline. For every totals
update each client receives, the delay runs from the version's database transaction
(`updated_at`) to its arrival at the client: commit, accepted event, counter, totals
topic, the API's one consumer, the fan-out, the socket.

What was published is read from the totals topic itself, not from what the clients
received: the versions published during the run and the final one. After the last POST
the run waits (bounded) until the published total equals COUNT(*) and every client has
the final version; a client that has not (it stopped, or fell behind) is incomplete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bench.data import CAMPAIGN, DataSet, campaign_rows, prepare
from bench.drain import peak_rss_mb
from bench.http import open_loop, percentiles
from ops.supervisor import running_stack
from runtime.broker import free_port
from runtime.kafka import read_to_end
from runtime.settings import Settings

STREAM = f"/v1/campaigns/{CAMPAIGN.slug}/totals/stream"
SIGN = f"/v1/campaigns/{CAMPAIGN.slug}/signatures"


@dataclass
class Listener:
    received: list[tuple[float, int, float]] = field(default_factory=list)  # at, version, made
    failed: str | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # first event, or failure


@dataclass
class FanoutResult:
    clients: int
    connected: int
    versions_published: int  # on the totals topic, after the version clients first got
    final_version: int  # the highest on the totals topic
    rows: int  # COUNT(*) of the campaign's counted rows
    published_total: int  # the total of the final version
    events: int  # updates delivered, all clients together
    complete_clients: int  # clients whose last update was the final version
    incomplete_clients: int  # connected clients that did not get it
    delay_ms: dict[str, float]
    api_cpu_seconds: float
    api_peak_rss_mb: float

    @property
    def totals_match(self) -> bool:
        return self.rows == self.published_total


async def _listen(port: int, listener: Listener) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        listener.failed = type(exc).__name__
        listener.settled.set()
        return
    try:
        writer.write(
            b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
            % STREAM.encode()
        )
        while (line := await reader.readline()) not in (b"\r\n", b""):
            pass
        while line := await reader.readline():
            if line.startswith(b"data: "):
                totals = json.loads(line[6:])
                made = datetime.fromisoformat(totals["updated_at"]).timestamp()
                listener.received.append((time.time(), totals["version"], made))
                listener.settled.set()
    finally:
        listener.settled.set()
        writer.close()


def _has(listener: Listener, version: int) -> bool:
    """The client's last update is `version` (versions only grow)."""
    return bool(listener.received) and listener.received[-1][1] == version


async def read_versions(settings: Settings) -> set[tuple[int, int]]:
    """(version, total) of every version of the campaign on the totals topic."""
    return {
        (totals["version"], totals["total"])
        for record in await read_to_end(settings, settings.topic_totals)
        if (totals := json.loads(record.value))["campaign"] == CAMPAIGN.slug
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_fanout(
    settings: Settings, data: DataSet, clients: int, rate: float, seconds: float, log_dir: Path
) -> FanoutResult:
    await prepare(settings)
    # Room for every client: the stream cap and the connection limit are per API process.
    settings = settings.model_copy(
        update={
            "sse_max_streams": max(settings.sse_max_streams, clients),
            "http_max_connections": max(settings.http_max_connections, clients + 1_024),
        }
    )
    port = free_port()
    async with running_stack(
        settings, host="127.0.0.1", port=port, persist_workers=2, log_dir=log_dir
    ) as stack:
        api = next(child for child in stack.children if child.name == "api").process
        assert api is not None  # noqa: S101 - started by running_stack
        listeners = [Listener() for _ in range(clients)]
        tasks = [asyncio.create_task(_listen(port, listener)) for listener in listeners]
        async with asyncio.timeout(120):  # every client has its first event (the current totals)
            await asyncio.gather(*(listener.settled.wait() for listener in listeners))
        await asyncio.sleep(6)  # let the workers' consumer group settle
        cpu_before = _cpu_seconds(api.pid)
        await open_loop("127.0.0.1", port, SIGN, data.bodies[: int(rate * seconds)], rate)
        deadline = time.perf_counter() + max(60.0, 2 * seconds)
        while True:  # the last version is published, and every client has it (or the bound)
            rows = await campaign_rows(stack.settings)
            published = await read_versions(stack.settings)
            final = max(published, default=(0, -1))
            if (final[1] == rows and all(_has(x, final[0]) for x in listeners)) or (
                time.perf_counter() > deadline
            ):
                break
            await asyncio.sleep(0.5)
        cpu = _cpu_seconds(api.pid) - cpu_before
        rss = peak_rss_mb(api.pid)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
    later = [event for x in listeners for event in x.received[1:]]
    connected = [x for x in listeners if x.received]
    first = min((x.received[0][1] for x in connected), default=0)
    complete = sum(1 for x in connected if _has(x, final[0]))
    return FanoutResult(
        clients=clients,
        connected=len(connected),
        versions_published=sum(1 for version, _ in published if version > first),
        final_version=final[0],
        rows=rows,
        published_total=final[1],
        events=len(later),
        complete_clients=complete,
        incomplete_clients=len(connected) - complete,
        delay_ms={
            k: v * 1000 for k, v in percentiles([at - made for at, _, made in later]).items()
        },
        api_cpu_seconds=round(cpu, 2),
        api_peak_rss_mb=round(rss, 1),
    )
