"""`signatures keys`: the data keys that encrypt signers' personal data, for operators.

- `status`: per campaign, its data key versions, which is current, which master key
  wrapped each (its fingerprint) and how many rows each encrypts; never key material.
- `rotate`: every data key still wrapped by another master key (the previous one, given
  by SIGNATURES_PREVIOUS_MASTER_KEY) is rewrapped under SIGNATURES_MASTER_KEY. With
  `reencrypt`, each campaign also gets a new data key version and its rows are moved to
  it in batches; once no row uses an old version, that version is deleted.
- `encrypt`: rows stored before encryption existed (plaintext columns) are encrypted under
  their campaign's current key, in batches, and their plaintext emptied.

Every step is safe to interrupt and to run again, and to run while the pipeline runs:
each batch is its own transaction, what is done is recorded in the rows themselves (their
`key_id`), and persist workers keep inserting with whatever key is current; rows under any
version stay readable. A batch skips rows another transaction holds (a confirmation, a
removal) and a later pass takes them; passes repeat until nothing is left to move.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from runtime.db import Conn
from runtime.pii import (
    KEY_BYTES,
    DataKey,
    DataKeys,
    deserialise,
    serialise,
    unwrap,
    wrap,
)

BATCH = 1_000

Progress = Callable[[int], None]


@dataclass(frozen=True)
class KeyVersion:
    campaign: str
    version: int
    current: bool
    master_fingerprint: str
    rows: int
    created_at: str


@dataclass(frozen=True)
class KeyStatus:
    versions: list[KeyVersion]
    plaintext_rows: dict[str, int]  # by campaign: rows stored before encryption, not yet moved


_VERSIONS = """
SELECT k.id, k.campaign, k.version, k.current, k.master_fingerprint, k.created_at,
       (SELECT count(*) FROM signatures s WHERE s.key_id = k.id) AS rows_
FROM data_keys k ORDER BY k.campaign, k.version
"""
_PLAINTEXT_ROWS = """
SELECT campaign, count(*) AS n FROM signatures
WHERE key_id IS NULL AND num_nonnulls(first_name, last_name, email, postcode) > 0
GROUP BY campaign
"""


async def key_status(pool: asyncpg.Pool) -> KeyStatus:
    versions = [
        KeyVersion(
            r["campaign"],
            r["version"],
            r["current"],
            r["master_fingerprint"],
            r["rows_"],
            r["created_at"].isoformat(timespec="seconds"),
        )
        for r in await pool.fetch(_VERSIONS)
    ]
    plaintext = {r["campaign"]: r["n"] for r in await pool.fetch(_PLAINTEXT_ROWS)}
    return KeyStatus(versions, plaintext)


# --- master key rotation: rewrap -------------------------------------------------------

_TO_REWRAP = """
SELECT id FROM data_keys
WHERE master_fingerprint <> $1 AND ($2::text IS NULL OR campaign = $2) ORDER BY id
"""
_LOCK_KEY = """
SELECT id, campaign, version, wrapped, master_fingerprint FROM data_keys WHERE id = $1
FOR NO KEY UPDATE
"""
_REWRAP = """
UPDATE data_keys SET wrapped = $2, master_fingerprint = $3, rewrapped_at = now() WHERE id = $1
"""


async def rewrap(pool: asyncpg.Pool, keys: DataKeys, campaign: str | None = None) -> int:
    """Rewrap under the master key every data key wrapped by another; how many were."""
    keyring = keys.keyring
    done = 0
    for key_id in [r["id"] for r in await pool.fetch(_TO_REWRAP, keyring.fingerprint, campaign)]:
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_LOCK_KEY, key_id)
            if row is None or row["master_fingerprint"] == keyring.fingerprint:
                continue  # deleted, or rewrapped meanwhile
            old = keyring.master_for(row["master_fingerprint"])
            plain = unwrap(old, row["wrapped"], row["campaign"], row["version"])
            wrapped = wrap(keyring.master, plain, row["campaign"], row["version"])
            await conn.execute(_REWRAP, key_id, wrapped, keyring.fingerprint)
        done += 1
    return done


# --- data keys: new versions, and rows moved to the current one ------------------------

_RETIRE = "UPDATE data_keys SET current = false WHERE campaign = $1 AND current"
_NEW_VERSION = """
INSERT INTO data_keys (campaign, version, wrapped, master_fingerprint)
VALUES ($1, $2, $3, $4)
RETURNING id
"""
_NEXT_VERSION = "SELECT coalesce(max(version), 0) + 1 FROM data_keys WHERE campaign = $1"
_CAMPAIGNS = "SELECT slug FROM campaigns WHERE $1::text IS NULL OR slug = $1 ORDER BY slug"

# Rows of the campaign not under `target`: under another key, or stored in plaintext.
_TO_MOVE = """
FROM signatures s
WHERE s.campaign = $1 AND (
    s.key_id <> $2
    OR (s.key_id IS NULL AND num_nonnulls(s.first_name, s.last_name, s.email, s.postcode) > 0)
)
"""
_COUNT_TO_MOVE = "SELECT count(*) " + _TO_MOVE
_BATCH_TO_MOVE = (
    "SELECT s.id, s.submission_id, s.campaign, s.state, s.key_id, s.pii, s.first_name, "
    "s.last_name, s.email, s.postcode "
    + _TO_MOVE
    + " AND s.id > $3 ORDER BY s.id LIMIT $4 FOR UPDATE SKIP LOCKED"
)
_MOVE = """
UPDATE signatures s
SET key_id = d.key_id, pii = d.pii,
    first_name = NULL, last_name = NULL, email = NULL, postcode = NULL
FROM unnest($1::bigint[], $2::int[], $3::bytea[]) AS d(id, key_id, pii)
WHERE s.id = d.id
"""
_OLD_KEYS = "SELECT id FROM data_keys WHERE campaign = $1 AND NOT current ORDER BY id"
_LOCK_FOR_DELETE = "SELECT id FROM data_keys WHERE id = $1 FOR UPDATE"
_IN_USE = "SELECT EXISTS (SELECT 1 FROM signatures WHERE key_id = $1)"
_DELETE_KEY = "DELETE FROM data_keys WHERE id = $1"


async def campaigns(pool: asyncpg.Pool, campaign: str | None) -> list[str]:
    return [r["slug"] for r in await pool.fetch(_CAMPAIGNS, campaign)]


async def current_key(pool: asyncpg.Pool, keys: DataKeys, campaign: str) -> DataKey:
    async with pool.acquire() as conn, conn.transaction():
        return (await keys.current(conn, [campaign]))[campaign]


async def new_key_version(pool: asyncpg.Pool, keys: DataKeys, campaign: str) -> DataKey:
    """A new current data key for the campaign; the previous ones stay, for their rows."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('data_keys:' || $1))", campaign)
        version = await conn.fetchval(_NEXT_VERSION, campaign)
        raw = os.urandom(KEY_BYTES)
        await conn.execute(_RETIRE, campaign)
        key_id = await conn.fetchval(
            _NEW_VERSION,
            campaign,
            version,
            wrap(keys.keyring.master, raw, campaign, version),
            keys.keyring.fingerprint,
        )
    return DataKey(key_id, campaign, version, raw)


async def rows_to_move(pool: asyncpg.Pool, campaign: str, target: DataKey) -> int:
    return int(await pool.fetchval(_COUNT_TO_MOVE, campaign, target.id))


async def move_rows(
    pool: asyncpg.Pool,
    keys: DataKeys,
    campaign: str,
    target: DataKey,
    *,
    progress: Progress = lambda _n: None,
    batch: int = BATCH,
    pause_s: float = 0.0,
) -> int:
    """Encrypt under `target` every row of the campaign not yet under it; how many moved.

    Passes over the rows by id, a batch per transaction, until none is left (rows that a
    worker was inserting under the previous key when `target` became current included).
    A removed row kept from before encryption has its plaintext emptied, nothing else.
    """
    moved = 0
    while True:
        last, passed = 0, 0
        while True:
            async with pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(_BATCH_TO_MOVE, campaign, target.id, last, batch)
                if not rows:
                    break
                await _move(conn, keys, target, rows)
            last = rows[-1]["id"]
            passed += len(rows)
            progress(len(rows))
            if pause_s:
                await asyncio.sleep(pause_s)
        moved += passed
        if passed == 0 and await rows_to_move(pool, campaign, target) == 0:
            return moved
        if passed == 0:  # all left are held by other transactions: wait for them
            await asyncio.sleep(0.2)


async def _move(conn: Conn, keys: DataKeys, target: DataKey, rows: list[asyncpg.Record]) -> None:
    found = await keys.by_ids(conn, (r["key_id"] for r in rows))
    ids: list[int] = []
    key_ids: list[int | None] = []
    blobs: list[bytes | None] = []
    for r in rows:
        if r["key_id"] is not None:
            record = found[r["key_id"]].open(r["pii"], r["submission_id"], r["campaign"])
            deserialise(record)  # a record that cannot be read is not carried over
        elif r["state"] == "removed":  # cleared before encryption existed: keep nothing
            ids.append(r["id"])
            key_ids.append(None)
            blobs.append(None)
            continue
        else:
            record = serialise(
                r["first_name"] or "", r["last_name"] or "", r["email"] or "", r["postcode"]
            )
        ids.append(r["id"])
        key_ids.append(target.id)
        blobs.append(target.seal(record, r["submission_id"], r["campaign"]))
    await conn.execute(_MOVE, ids, key_ids, blobs)


async def delete_unused_keys(pool: asyncpg.Pool, keys: DataKeys, campaign: str) -> list[int]:
    """Delete the campaign's old data keys that no row uses any more; their ids.

    The key row is locked first: that waits for any persist worker's transaction still
    writing with it (they hold it `FOR KEY SHARE`), so its rows are seen before deciding.
    """
    deleted = []
    for key_id in [r["id"] for r in await pool.fetch(_OLD_KEYS, campaign)]:
        async with pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(_LOCK_FOR_DELETE, key_id) is None:
                continue
            if await conn.fetchval(_IN_USE, key_id):
                continue
            await conn.execute(_DELETE_KEY, key_id)
        keys.forget(key_id)
        deleted.append(key_id)
    return deleted


async def has_keys(pool: asyncpg.Pool, campaign: str) -> bool:
    return bool(
        await pool.fetchval("SELECT EXISTS (SELECT 1 FROM data_keys WHERE campaign = $1)", campaign)
    )


@dataclass
class Moved:
    campaign: str
    version: int  # the data key version its rows are under now
    rows: int
    deleted_versions: int


async def reencrypt(
    pool: asyncpg.Pool,
    keys: DataKeys,
    campaign: str,
    *,
    start: Callable[[str, int], Progress] = lambda _c, _n: lambda _m: None,
    pause_s: float = 0.0,
    batch: int = BATCH,
) -> Moved | None:
    """A new data key version for the campaign and every row moved to it; None if the
    campaign has never had a key (no row to move).

    If an earlier run was interrupted (rows still under an old version, or in plaintext),
    this finishes moving them to the current version first, without a new one: run it
    again afterwards for a fresh version.
    """
    if not await has_keys(pool, campaign):
        return None
    target = await current_key(pool, keys, campaign)
    if await rows_to_move(pool, campaign, target) == 0:
        target = await new_key_version(pool, keys, campaign)
    return await _finish(pool, keys, campaign, target, start, pause_s, batch)


async def encrypt_plaintext(
    pool: asyncpg.Pool,
    keys: DataKeys,
    campaign: str,
    *,
    start: Callable[[str, int], Progress] = lambda _c, _n: lambda _m: None,
    pause_s: float = 0.0,
    batch: int = BATCH,
) -> Moved | None:
    """Rows stored before encryption, encrypted under the campaign's current key (and
    any row under an old version moved to it); None if there was nothing to do."""
    plaintext = await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM signatures WHERE campaign = $1 AND key_id IS NULL "
        "AND num_nonnulls(first_name, last_name, email, postcode) > 0)",
        campaign,
    )
    if not plaintext:
        return None
    target = await current_key(pool, keys, campaign)
    return await _finish(pool, keys, campaign, target, start, pause_s, batch)


async def _finish(
    pool: asyncpg.Pool,
    keys: DataKeys,
    campaign: str,
    target: DataKey,
    start: Callable[[str, int], Progress],
    pause_s: float,
    batch: int,
) -> Moved:
    """Every row to `target`, then the old versions deleted; again while a persist worker
    that took an old version as current just before the switch still wrote with it."""
    progress = start(campaign, await rows_to_move(pool, campaign, target))
    moved, deleted = 0, 0
    for _ in range(_ATTEMPTS):
        moved += await move_rows(
            pool, keys, campaign, target, progress=progress, pause_s=pause_s, batch=batch
        )
        deleted += len(await delete_unused_keys(pool, keys, campaign))
        if not await _old_versions(pool, campaign):
            return Moved(campaign, target.version, moved, deleted)
        await asyncio.sleep(0.5)
    raise OldVersionsInUse(
        f"{campaign}: rows still under an old data key version after {_ATTEMPTS} passes; "
        "run the command again"
    )


_ATTEMPTS = 20  # passes; a worker that took an old version as current needs one more


class OldVersionsInUse(RuntimeError):
    pass


async def _old_versions(pool: asyncpg.Pool, campaign: str) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM data_keys WHERE campaign = $1 AND NOT current)",
            campaign,
        )
    )
