"""The API, and the whole pipeline, in the test process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn

from consumers.service import WorkerKind, run_worker
from ingest.api import create_app
from ingest.server import server_config
from runtime.broker import free_port
from runtime.settings import Settings


@contextlib.asynccontextmanager
async def serving_api(settings: Settings) -> AsyncIterator[str]:
    """Yields the base URL of the API, served by uvicorn on a free port until the end."""
    port = free_port()
    # The configuration `signatures api` runs with: its limits and timeouts included.
    server = uvicorn.Server(
        server_config(create_app(settings), settings, host="127.0.0.1", port=port)
    )
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


@contextlib.asynccontextmanager
async def running_pipeline(settings: Settings) -> AsyncIterator[str]:
    """Yields the API's base URL while the API, a persist worker and a counter run."""
    stop = asyncio.Event()
    workers = [
        asyncio.create_task(run_worker(WorkerKind.PERSIST, settings, stop)),
        asyncio.create_task(run_worker(WorkerKind.COUNT, settings, stop)),
    ]
    try:
        async with serving_api(settings) as url:
            yield url
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
