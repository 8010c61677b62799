"""Numbered SQL migrations, applied in order under an advisory lock.

Each file `NNNN_name.sql` runs in its own transaction and is recorded in
`schema_migrations`. A database that knows a newer version than this code is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

LOCK_ID = 0x5167_4E41  # arbitrary, fixed: serialises concurrent `migrate` runs
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    folder = resources.files("schemas") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    return found


def latest_version() -> int:
    migrations = available()
    return migrations[-1].version if migrations else 0


async def current_version(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy) -> int:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
    return int(version)


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply what is missing; return what was applied."""
    applied: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        current = await current_version(conn)
        latest = latest_version()
        if current > latest:
            raise MigrationError(
                f"database is at schema version {current}, this code knows {latest}: "
                "upgrade the code"
            )
        for migration in available():
            if migration.version <= current:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
    return applied
