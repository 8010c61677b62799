"""Live surge over HTTP, and the most one API process sustains.

Surge: single-signature POSTs at a fixed rate, open loop, through the whole pipeline (one
API process, two persist workers, the counter). Each signature's submit-to-counted
latency runs from its scheduled send to the arrival, on the totals topic, of a version
at least the `totals_version` its accepted event names. After the last send the surge
waits, with a generous bound (`settle_bound`), until every accepted POST has ended in the
database (a row, a counted duplicate or a dead letter), every new row is counted on the
totals topic and the published total equals COUNT(*): a lagging pipeline makes the
latencies longer, never fewer. What is still not counted at the bound is reported as
`uncounted`, and the surge as incomplete.

Maximum: wrk (closed loop, N connections, on this same machine) against the same API,
stepping the connection count until p99 passes 100 ms; the best rate whose p99 stays under.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aiokafka import TopicPartition

from bench.data import CAMPAIGN, DataSet, campaign_rows, prepare
from bench.drain import Outcome, outcome
from bench.http import open_loop, percentiles
from ops.supervisor import running_stack
from runtime.broker import free_port
from runtime.kafka import make_consumer
from runtime.settings import Settings

PATH = f"/v1/campaigns/{CAMPAIGN.slug}/signatures"


@dataclass
class SurgeResult:
    rate: float
    seconds: float
    sent: int
    errors: int
    accepted: int  # 202 answers
    refused: int  # 422 answers
    request_ms: dict[str, float]
    counted_ms: dict[str, float]
    counted: int  # new rows whose counting on the totals topic was seen (with a latency)
    outcome: Outcome  # where the accepted POSTs ended
    rows: int  # COUNT(*) of the campaign's counted rows
    published_total: int  # its total on the totals topic, highest version
    settle_seconds: float  # from the last answer until everything was counted (or the bound)

    @property
    def uncounted(self) -> int:
        """New rows whose counting was not seen within the bound: no latency for them."""
        return self.outcome.stored - self.counted

    @property
    def totals_match(self) -> bool:
        return self.rows == self.published_total

    @property
    def conserved(self) -> bool:
        """Every accepted POST ended as a row, a counted duplicate or a dead letter."""
        return self.outcome.accounted == self.accepted

    @property
    def complete(self) -> bool:
        return self.uncounted == 0 and self.totals_match and self.conserved


@dataclass
class WrkResult:
    connections: int
    requests_per_s: float
    p99_ms: float
    errors: int


class _Tail:
    """Reads a topic from its beginning in the background, noting when each record arrived."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings, self.topic = settings, topic
        self.records: list[tuple[float, bytes]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        consumer = make_consumer(self.settings, None, fetch_max_wait_ms=20)
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batch = await consumer.getmany(timeout_ms=50, max_records=10_000)
                now = time.perf_counter()
                for records in batch.values():
                    self.records.extend((now, r.value) for r in records if r.value)
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def published_total(totals: _Tail) -> int:
    """The total of the highest version seen on the totals topic (-1: none yet)."""
    latest = max((json.loads(value) for _, value in totals.records),
                 key=lambda t: t["version"], default=None)  # fmt: skip
    return int(latest["total"]) if latest else -1


def settle_bound(seconds: float) -> float:
    """How long the surge waits after its last send for everything to be counted: far
    longer than a healthy pipeline needs, so only a stuck one reaches it."""
    return max(60.0, 2 * seconds)


def counted_latencies(
    bodies: list[bytes], scheduled: dict[int, float], accepted: _Tail, totals: _Tail
) -> list[float]:
    """Per new signature: seconds from its scheduled send to a totals version counting it."""
    published = sorted(
        (json.loads(value)["version"], at) for at, value in totals.records
    )  # version order
    versions = [v for v, _ in published]
    # earliest arrival of any version >= v, for every position in version order
    earliest = [at for _, at in published]
    for i in range(len(earliest) - 2, -1, -1):
        earliest[i] = min(earliest[i], earliest[i + 1])
    index_of = {json.loads(body)["submission_id"]: i for i, body in enumerate(bodies)}
    latencies: dict[int, float] = {}
    for _, value in accepted.records:
        event = json.loads(value)
        index = index_of.get(event["submission_id"])
        if index is None or index in latencies or index not in scheduled:
            continue
        position = bisect.bisect_left(versions, event["totals_version"])
        if position < len(earliest):
            latencies[index] = earliest[position] - scheduled[index]
    return list(latencies.values())


async def run_surge(
    settings: Settings, data: DataSet, rate: float, seconds: float, log_dir: Path
) -> tuple[SurgeResult, list[WrkResult]]:
    await prepare(settings)
    count = int(rate * seconds)
    bodies = data.bodies[:count]
    port = free_port()
    async with running_stack(
        settings, host="127.0.0.1", port=port, persist_workers=2, log_dir=log_dir
    ) as stack:
        s = stack.settings
        accepted, totals = _Tail(s, s.topic_accepted), _Tail(s, s.topic_totals)
        await accepted.start()
        await totals.start()
        await asyncio.sleep(6)  # let the workers' consumer group settle first
        result = await open_loop("127.0.0.1", port, PATH, bodies, rate)
        scheduled = {sent.index: sent.scheduled for sent in result.sent if sent.status == 202}
        answered = time.perf_counter()
        deadline = answered + settle_bound(seconds)
        while True:  # every accepted signature ends somewhere and is counted, or the bound
            ended = await outcome(s)
            rows = await campaign_rows(s)
            counted = counted_latencies(bodies, scheduled, accepted, totals)
            if (
                ended.accounted >= len(scheduled)
                and len(counted) >= ended.stored
                and published_total(totals) == rows
            ) or time.perf_counter() > deadline:
                break
            await asyncio.sleep(0.5)
        settled = time.perf_counter()
        await accepted.stop()
        await totals.stop()
        ended, rows = await outcome(s), await campaign_rows(s)  # as the tails last saw
        await stack.stop_workers()  # the API alone: what one process sustains
        wrk = await asyncio.to_thread(run_wrk_steps, "127.0.0.1", port)
    counted = counted_latencies(bodies, scheduled, accepted, totals)
    request_ms = percentiles([(x.finished - x.scheduled) * 1000 for x in result.sent])
    return (
        SurgeResult(
            rate=rate,
            seconds=seconds,
            sent=len(result.sent),
            errors=result.errors,
            accepted=len(scheduled),
            refused=sum(1 for sent in result.sent if sent.status == 422),
            request_ms=request_ms,
            counted_ms={k: v * 1000 for k, v in percentiles(counted).items()},
            counted=len(counted),
            outcome=ended,
            rows=rows,
            published_total=published_total(totals),
            settle_seconds=settled - answered,
        ),
        wrk,
    )


_WRK_SCRIPT = """
local counter = 0
local id = 0
function setup(thread) id = id + 1; thread:set("id", id) end
function request()
  counter = counter + 1
  local body = string.format(
    '{"first_name":"Ada","last_name":"Rossi","email":"wrk%d.%d.%d@example.org",' ..
    '"country":"IT","consent":true}', id, counter, RUN)
  return wrk.format("POST", PATH, {["Content-Type"] = "application/json"}, body)
end
"""


def run_wrk(host: str, port: int, connections: int, seconds: int = 8) -> WrkResult:
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed (scripts/bootstrap installs it)")
    script = _WRK_SCRIPT.replace("PATH", repr(PATH)).replace("RUN", str(time.time_ns() % 10**9))
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as file:
        file.write(script)
        file.flush()
        output = subprocess.run(  # noqa: S603 - fixed argv
            [binary, "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency",
             "-s", file.name, f"http://{host}:{port}{PATH}"],
            capture_output=True, text=True, check=True, timeout=seconds + 30,
        ).stdout  # fmt: skip
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", output)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p99_ms = float(p99[1]) * scale[p99[2]] if p99 else float("inf")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = int(non_2xx[1]) if non_2xx else 0
    if socket_errors:
        errors += sum(int(socket_errors[i]) for i in range(1, 5))
    return WrkResult(connections, rate, p99_ms, errors)


WRK_CONNECTIONS = (8, 16, 32, 64, 96, 128, 192)
P99_LIMIT_MS = 100.0


def run_wrk_steps(host: str, port: int) -> list[WrkResult]:
    """More connections until p99 passes the limit: past that point the API is saturated,
    and more concurrency only adds queueing."""
    steps = []
    for connections in WRK_CONNECTIONS:
        steps.append(run_wrk(host, port, connections))
        if steps[-1].p99_ms >= P99_LIMIT_MS or steps[-1].errors:
            break
    return steps
