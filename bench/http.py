"""A small open-loop HTTP/1.1 load generator for the benchmark.

Requests are scheduled at a fixed rate and timed from their scheduled moment, so a slow
server cannot hide its queueing (no coordinated omission). Keep-alive connections, no
pipelining. Hand-written because the Python HTTP clients cost more per request than the
server under test; `wrk` measures the closed-loop maximum separately.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Sent:
    index: int
    scheduled: float
    status: int  # 0: connection error
    finished: float


@dataclass
class OpenLoopResult:
    sent: list[Sent] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(1 for s in self.sent if s.status not in (202, 422))


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, content_type: bytes = b"application/json") -> int:
        if self.writer is None or self.reader is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nAccept: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s"
            % (path.encode(), self.host.encode(), content_type, len(body), body)
        )
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def open_loop(
    host: str, port: int, path: str, bodies: Sequence[bytes], rate: float, connections: int = 64
) -> OpenLoopResult:
    """POST every body, the i-th at start + i/rate, over up to `connections` connections."""
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    result = OpenLoopResult()

    async def client() -> None:
        connection = _Connection(host, port)
        try:
            while (item := await queue.get()) is not None:
                index, scheduled = item
                try:
                    status = await connection.post(path, bodies[index])
                except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                    connection.close()
                    connection = _Connection(host, port)
                    status = 0
                result.sent.append(Sent(index, scheduled, status, time.perf_counter()))
        finally:
            connection.close()

    clients = [asyncio.create_task(client()) for _ in range(connections)]
    start = time.perf_counter() + 0.05
    for index in range(len(bodies)):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((index, scheduled))
    for _ in clients:
        queue.put_nowait(None)
    await asyncio.gather(*clients)
    return result


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99 and max of `values` (any unit)."""
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


async def closed_loop(
    host: str,
    port: int,
    requests: Sequence[tuple[str, bytes]],
    connections: int,
    content_type: bytes = b"application/json",
) -> OpenLoopResult:
    """POST every (path, body) as fast as `connections` keep-alive connections allow; each
    request is timed from when its connection sent it."""
    queue: asyncio.Queue[int | None] = asyncio.Queue()
    for index in range(len(requests)):
        queue.put_nowait(index)
    result = OpenLoopResult()

    async def client() -> None:
        connection = _Connection(host, port)
        try:
            while not queue.empty() and (index := queue.get_nowait()) is not None:
                started = time.perf_counter()
                path, body = requests[index]
                try:
                    status = await connection.post(path, body, content_type)
                except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                    connection.close()
                    connection = _Connection(host, port)
                    status = 0
                result.sent.append(Sent(index, started, status, time.perf_counter()))
        finally:
            connection.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return result
