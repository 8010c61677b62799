"""PostgreSQL: the pool, database creation, migrations and the dedupe-key guard."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolAcquireContext

from schemas.migrate import current_version, latest_version, migrate

# A connection as a pool lends it, or a plain one; and anything that can run a query.
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
Queryable = Conn | asyncpg.Pool


class DedupeKeyMismatch(RuntimeError):
    pass


async def _init_connection(conn: asyncpg.Connection) -> None:
    # One staging table per connection for COPY; emptied at every commit. It has no column
    # for plaintext names, email or postcode: only their encrypted blob (runtime/pii.py).
    await conn.execute(
        """CREATE TEMP TABLE IF NOT EXISTS staging_signatures (
               submission_id uuid, campaign text, email_hash bytea, key_id integer,
               pii bytea, country text, consent boolean, language text, source text,
               submitted_at timestamptz, received_at timestamptz, client_prefix text,
               client_hash bytea, email_domain text, flag text
           ) ON COMMIT DELETE ROWS"""
    )


class BoundedPool(asyncpg.Pool):
    """A pool whose every acquire, `pool.fetch(...)` and the like included, waits at most
    `acquire_timeout` seconds for a connection and then raises TimeoutError.

    asyncpg's own acquire waits without end by default: when every connection is busy, a
    flood of requests would queue behind them and slow everyone. The API turns the
    TimeoutError into a 503 with Retry-After instead.
    """

    def __init__(self, dsn: str, *, acquire_timeout: float | None, **kwargs: Any) -> None:
        super().__init__(dsn, **kwargs)
        self.acquire_timeout = acquire_timeout

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext[asyncpg.Record]:
        return super().acquire(timeout=self.acquire_timeout if timeout is None else timeout)


async def create_pool(
    database_url: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    acquire_timeout: float | None = None,
) -> asyncpg.Pool:
    # The arguments asyncpg.create_pool would pass; asyncpg documents `Pool(dsn, **kwargs)`.
    pool = BoundedPool(
        database_url,
        acquire_timeout=acquire_timeout,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        init=_init_connection,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        command_timeout=60,
        server_settings={"application_name": "signatures"},
    )
    await pool
    return pool


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


async def ensure_database(url: str) -> bool:
    """Create the database named in the URL if it does not exist; True if created."""
    name = database_name(url)
    conn = await asyncpg.connect(_with_database(url, "postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False
        return True
    finally:
        await conn.close()


async def apply_migrations(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return [f"{m.version:04d}_{m.name}" for m in await migrate(conn)]
    finally:
        await conn.close()


async def schema_is_current(conn: Conn) -> bool:
    return await current_version(conn) == latest_version()


def key_fingerprint(secret: bytes) -> str:
    return hmac.new(secret, b"signatures dedupe key fingerprint v1", hashlib.sha256).hexdigest()[
        :16
    ]


async def check_dedupe_key(pool: asyncpg.Pool, secret: bytes) -> None:
    """Refuse to run with a different dedupe secret than the one the stored hashes used."""
    fingerprint = key_fingerprint(secret)
    stored = await pool.fetchval(
        """INSERT INTO dedupe_key (fingerprint) VALUES ($1)
           ON CONFLICT (singleton) DO UPDATE SET fingerprint = dedupe_key.fingerprint
           RETURNING fingerprint""",
        fingerprint,
    )
    if stored != fingerprint:
        raise DedupeKeyMismatch(
            "SIGNATURES_DEDUPE_SECRET: differs from the secret this database's dedupe hashes "
            f"were made with (fingerprint {stored}); the same person would be counted twice"
        )
