"""What every command line shares: its settings and logging, and a run on uvloop with a
pool connected as the operators' role."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from runtime.logs import configure_logging
from runtime.settings import Settings, load_settings

T = TypeVar("T")


def command_settings() -> Settings:
    """The settings, with logging configured as they say."""
    loaded = load_settings()
    configure_logging(loaded.log_format, loaded.log_level)
    return loaded


def run(coro: Callable[[], Awaitable[T]]) -> T:
    """Run a command on uvloop, as the API runs: its transports and scheduling are C, which
    takes about a tenth off a persist worker's CPU per message (measured here)."""
    import uvloop  # a fast `--help`

    async def main() -> T:
        return await coro()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


async def with_pool(s: Settings, use: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """`use` a pool of one connection, as the operators' role (SIGNATURES_OPERATOR_DATABASE_URL)."""
    from runtime.db import create_pool  # a fast `--help`

    pool = await create_pool(s.database_url_for("operator"), max_size=1)
    try:
        return await use(pool)
    finally:
        await pool.close()


def run_with_pool(s: Settings, use: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """`with_pool`, run on uvloop."""
    return run(lambda: with_pool(s, use))
