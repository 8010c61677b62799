"""The confirm rate: how many confirmation clicks one API process turns into counted
signatures per second.

N signatures are stored pending through the real persist worker on a campaign that
requires confirmation, and a token is made for each, as the mail worker would (without
sending the email). Then C keep-alive connections POST `/confirm/{token}` (the page's
button, `action=confirm`) as fast as the API answers; each answer must be 200
`confirmed`, and it comes only once the confirmation has committed. Afterwards the
stored total must equal the confirmed rows, and the counter's published total too.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.data import CAMPAIGN, DataSet, prepare, produce_backlog
from bench.drain import start_workers, stop_processes, wait_published
from bench.http import closed_loop, percentiles
from runtime.broker import free_port
from runtime.confirmation import token_hash
from runtime.db import create_pool
from runtime.settings import Settings, settings_env
from schemas.campaign import Confirmation

CONNECTIONS = 32


@dataclass
class ConfirmResult:
    count: int
    connections: int
    seconds: float
    confirmed: int  # answers that said `confirmed`
    errors: int  # any other answer
    latency_ms: dict[str, float]
    rows: int  # confirmed rows afterwards
    published_total: int

    @property
    def per_s(self) -> float:
        return self.confirmed / self.seconds if self.seconds else 0.0

    @property
    def totals_match(self) -> bool:
        return self.rows == self.published_total == self.confirmed


async def _pending(settings: Settings, count: int, timeout: float) -> list[tuple[str, str]]:
    """Wait until `count` signatures are stored; a fresh token for each (id, token)."""
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        deadline = time.perf_counter() + timeout
        while (n := await pool.fetchval("SELECT count(*) FROM signatures")) < count:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {n}/{count} signatures stored")
            await asyncio.sleep(0.1)
        ids = [r["submission_id"] for r in await pool.fetch("SELECT submission_id FROM signatures")]
        expires = datetime.now(UTC) + timedelta(days=7)
        tokens = [f"{CAMPAIGN.slug}.{secrets.token_urlsafe(32)}" for _ in ids]
        await pool.copy_records_to_table(
            "confirmation_tokens",
            records=[
                (token_hash(t), i, CAMPAIGN.slug, expires) for i, t in zip(ids, tokens, strict=True)
            ],
            columns=("token_hash", "submission_id", "campaign", "expires_at"),
        )
        return [(str(i), t) for i, t in zip(ids, tokens, strict=True)]
    finally:
        await pool.close()


async def _start_api(settings: Settings, port: int, log_dir: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, **settings_env(settings), "SIGNATURES_LOG_FORMAT": "json"}
    with (log_dir / "bench-confirm-api.log").open("ab") as log:
        api = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "api", "--port", str(port),
            env=env, stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return api
    raise TimeoutError("the API did not start")


async def run_confirm(
    settings: Settings, data: DataSet, count: int, log_dir: Path, timeout: float = 300
) -> ConfirmResult:
    await prepare(settings, Confirmation.REQUIRED)
    await produce_backlog(settings, data.head(count))
    workers = await start_workers(settings, 1, log_dir)
    port = free_port()
    api = await _start_api(settings, port, log_dir)
    try:
        stored = await _pending(settings, data.head(count).new_signers, timeout)
        requests = [(f"/confirm/{token}", b"action=confirm") for _, token in stored]
        started = time.perf_counter()
        result = await closed_loop(
            "127.0.0.1", port, requests, CONNECTIONS, b"application/x-www-form-urlencoded"
        )
        seconds = time.perf_counter() - started
        rows, published = await wait_published(settings, time.perf_counter() + 60)
    finally:
        await stop_processes([api, *workers])
    confirmed = sum(1 for s in result.sent if s.status == 200)
    return ConfirmResult(
        count=len(requests),
        connections=CONNECTIONS,
        seconds=seconds,
        confirmed=confirmed,
        errors=len(requests) - confirmed,
        latency_ms={
            k: v * 1000
            for k, v in percentiles([s.finished - s.scheduled for s in result.sent]).items()
        },
        rows=rows,
        published_total=published,
    )
