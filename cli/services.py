"""The long-running services: the ingest API and the consumer workers, one per process."""

from __future__ import annotations

import asyncio
import gc
from enum import StrEnum
from typing import Annotated

import typer

from cli.shared import command_settings as settings
from cli.shared import run
from runtime.logs import get_logger
from runtime.settings import ConfigError, Settings

log = get_logger("cli.services")

Host = Annotated[str | None, typer.Option(help="Address to listen on [SIGNATURES_API_HOST]")]
Port = Annotated[int | None, typer.Option(help="Port to listen on [SIGNATURES_API_PORT]")]


def tune_gc_for_throughput() -> None:
    """For the long-running services, once their imports are done.

    Every batch and request allocates many short-lived objects. With the default
    thresholds the collector runs every 700 allocations and its older generations rescan
    the long-lived state (modules, caches, clients) again and again: measured here, that
    was about 40 % of a persist worker's CPU. Freeze what exists at start, collect rarely.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def api(host: Host = None, port: Port = None) -> None:
    """Serve the ingest API (HTTP) on one process; its /metrics on SIGNATURES_METRICS_PORT."""
    import uvicorn

    from ingest.api import create_app
    from ingest.server import raise_open_files_limit, server_config

    s = settings()
    s.require_dedupe_secret()
    app = create_app(s)
    raise_open_files_limit(s)
    config = server_config(
        app, s, host=host or s.api_host, port=port if port is not None else s.api_port
    )
    serve_metrics(s, "api")
    tune_gc_for_throughput()
    uvicorn.Server(config).run()


class Worker(StrEnum):
    PERSIST = "persist"
    COUNT = "count"
    MAIL = "mail"


def worker(
    kind: Annotated[
        Worker,
        typer.Argument(
            help="persist: submissions to Postgres; count: totals; mail: confirmation emails"
        ),
    ],
    drain: Annotated[bool, typer.Option(help="Stop once the topic is drained")] = False,
) -> None:
    """Run one consumer process (scale by running more: they share a consumer group)."""
    from consumers.service import WorkerKind, install_stop_signals, run_worker

    s = settings()
    if kind is Worker.PERSIST:
        s.require_dedupe_secret()
    if kind is Worker.MAIL:
        s.require_mail()
    if kind is not Worker.COUNT:
        s.require_master_keys()  # names, email and postcode are stored encrypted

    async def go() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run_worker(WorkerKind(kind.value), s, stop, drain=drain)

    serve_metrics(s, kind.value)
    tune_gc_for_throughput()
    run(go)


def serve_metrics(s: Settings, worker: str) -> None:
    """/metrics of a worker or the API on its own port, in a thread (SIGNATURES_METRICS_PORT),
    never on the API's public port."""
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(s.metrics_port, addr=s.metrics_host)
    except OSError as exc:
        raise ConfigError(
            f"SIGNATURES_METRICS_PORT: cannot listen on {s.metrics_host}:{s.metrics_port} "
            f"({exc.strerror})"
        ) from None
    log.info("metrics_listening", worker=worker, host=s.metrics_host, port=server.server_port)
