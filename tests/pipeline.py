"""The whole pipeline in the test process: the API on a free port, a persist worker, a counter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn

from consumers.service import WorkerKind, run_worker
from ingest.api import create_app
from runtime.broker import free_port
from runtime.settings import Settings


@contextlib.asynccontextmanager
async def running_pipeline(settings: Settings) -> AsyncIterator[str]:
    """Yields the API's base URL while the API, a persist worker and a counter run."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    )
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(server.serve()),
        asyncio.create_task(run_worker(WorkerKind.PERSIST, settings, stop)),
        asyncio.create_task(run_worker(WorkerKind.COUNT, settings, stop)),
    ]
    try:
        async with asyncio.timeout(15):
            while not server.started:
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
