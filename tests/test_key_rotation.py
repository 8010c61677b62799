"""Key rotation: new data keys while a persist worker inserts, master key rewrap, plaintext
rows from before encryption, and `signatures keys` on the command line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from cli.main import app
from consumers.service import WorkerKind, run_worker
from ops.keys import (
    Progress,
    encrypt_plaintext,
    key_status,
    new_key_version,
    reencrypt,
    rewrap,
)
from runtime.campaigns import counted_rows, create_campaign, read_totals
from runtime.pii import DataKeys, KeyProblem, Keyring, new_master_key, parse_master_key
from runtime.settings import Settings, settings_env
from tests.conftest import MASTER_KEY
from tests.helpers import CAMPAIGN, decrypted, encode, keys_for_tests, produce, submission

pytestmark = pytest.mark.integration
SLUG = CAMPAIGN.slug


class Interrupted(Exception):
    pass


async def rows(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM signatures"))


async def wait_rows(pool: asyncpg.Pool, n: int, timeout: float = 90) -> None:
    async with asyncio.timeout(timeout):
        while await rows(pool) < n:
            await asyncio.sleep(0.1)


async def versions(pool: asyncpg.Pool) -> dict[int, int]:
    """Rows per data key version of the campaign."""
    found = await pool.fetch(
        "SELECT k.version, count(s.id) AS n FROM data_keys k "
        "LEFT JOIN signatures s ON s.key_id = k.id WHERE k.campaign = $1 GROUP BY k.version",
        SLUG,
    )
    return {r["version"]: r["n"] for r in found}


async def drain(settings: Settings) -> None:
    await asyncio.wait_for(
        run_worker(WorkerKind.PERSIST, settings, asyncio.Event(), drain=True), 60
    )


def people(n: int) -> list[dict[str, object]]:
    return [submission(first_name=f"Rot{i}", postcode=f"{i:05d}") for i in range(n)]


async def test_reencrypt_while_a_persist_worker_inserts(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_campaign(pool, CAMPAIGN)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(WorkerKind.PERSIST, settings, stop))
    keys = keys_for_tests()  # the operator's process: its own cache of unwrapped keys
    try:
        first = people(600)
        await produce(settings, encode(first))
        await wait_rows(pool, 600)
        assert await versions(pool) == {1: 600}

        # A new version becomes current: the worker writes with it from its next batch,
        # while the rows it wrote before stay under version 1; both read back.
        await new_key_version(pool, keys, SLUG)
        second = people(300)
        await produce(settings, encode(second))
        await wait_rows(pool, 900)
        assert await versions(pool) == {1: 600, 2: 300}
        assert {r["first_name"] for r in await decrypted(pool)} == {
            p["first_name"] for p in first + second
        }

        # Interrupted after its first batch: what was moved stays moved.
        def interrupt(_campaign: str, _total: int) -> Progress:
            def progress(_n: int) -> None:
                raise Interrupted

            return progress

        with pytest.raises(Interrupted):
            await reencrypt(pool, keys, SLUG, start=interrupt, batch=100)
        assert await versions(pool) == {1: 500, 2: 400}

        # Run again, while signatures keep arriving: it finishes the move to version 2
        # (no new version while rows are left behind) and deletes version 1.
        third = people(900)
        producing = asyncio.create_task(produce(settings, encode(third)))
        moved = await reencrypt(pool, keys, SLUG, batch=50, pause_s=0.01)
        await producing
        await wait_rows(pool, 1800)
        assert moved is not None and (moved.version, moved.deleted_versions) == (2, 1)
        assert moved.rows >= 500
        assert await versions(pool) == {2: 1800}

        # A fresh rotation when nothing is left behind: version 3, every row moved to it.
        again = await reencrypt(pool, keys, SLUG, batch=500)
        assert again is not None and (again.version, again.rows) == (3, 1800)
        fourth = people(100)
        await produce(settings, encode(fourth))
        await wait_rows(pool, 1900)
    finally:
        stop.set()
        await worker

    assert await versions(pool) == {3: 1900}
    everyone = first + second + third + fourth
    stored = await decrypted(pool)  # a cache that never saw the old versions
    assert sorted((r["first_name"], r["postcode"], r["email"]) for r in stored) == sorted(
        (p["first_name"], p["postcode"], p["email"]) for p in everyone
    )
    assert (await counted_rows(pool))[SLUG] == 1900
    [totals] = await read_totals(pool, [SLUG], min_count=1)
    assert totals.total == 1900
    status = await key_status(pool)
    assert [(v.version, v.current, v.rows) for v in status.versions] == [(3, True, 1900)]


async def test_master_key_rotation_rewraps_every_data_key(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_campaign(pool, CAMPAIGN)
    await produce(settings, encode(people(20)))
    await asyncio.wait_for(
        run_worker(WorkerKind.PERSIST, settings, asyncio.Event(), drain=True), 60
    )
    old = parse_master_key(MASTER_KEY)
    new = new_master_key()
    # step 2 of the procedure: every process knows both keys
    both = DataKeys(Keyring(parse_master_key(new), previous=old))
    assert await rewrap(pool, both, None) == 1
    assert await rewrap(pool, both, None) == 0  # done: nothing more
    assert {v.master_fingerprint for v in (await key_status(pool)).versions} == {
        both.keyring.fingerprint
    }
    # the new key alone opens everything; the old one opens nothing any more
    assert len(await decrypted_with(pool, new)) == 20
    with pytest.raises(KeyProblem):
        await decrypted_with(pool, MASTER_KEY)

    # a worker still on the old key alone refuses to start, naming the variable
    with pytest.raises(KeyProblem, match=r"^SIGNATURES_MASTER_KEY: data keys in this database"):
        await drain(settings)

    # a worker on the new key, without the previous one, stores and its rows read back
    later = settings.model_copy(update={"master_key": SecretStr(new)})
    await produce(settings, encode(people(5)))
    await drain(later)
    assert len(await decrypted_with(pool, new)) == 25


async def decrypted_with(pool: asyncpg.Pool, master_key: str) -> list[object]:
    from runtime.pii import PII_COLUMNS, reveal  # noqa: PLC0415

    keys = keys_for_tests(master_key)
    async with pool.acquire() as conn:
        found = await conn.fetch(f"SELECT {PII_COLUMNS} FROM signatures s")  # noqa: S608
        return list(await reveal(conn, keys, found))


async def test_rows_from_before_encryption_are_encrypted(pool: asyncpg.Pool) -> None:
    await create_campaign(pool, CAMPAIGN)
    # rows as a database migrated from 0008 holds them: plaintext, one of them removed
    await pool.execute(
        "INSERT INTO signatures (submission_id, campaign, email_hash, first_name, last_name, "
        "email, country, postcode, consent, source, submitted_at, state) "
        "SELECT gen_random_uuid(), $1, sha256(n::text::bytea), 'Old' || n, 'Row', "
        "'old' || n || '@example.org', 'IT', '0010' || n, true, 'web', now(), "
        "CASE WHEN n = 0 THEN 'removed' ELSE 'confirmed' END "
        "FROM generate_series(0, 9) AS n",
        SLUG,
    )
    await pool.execute(
        "UPDATE signatures SET first_name = '', last_name = '', email = '', postcode = NULL, "
        "email_hash = NULL WHERE state = 'removed'"
    )
    assert (await key_status(pool)).plaintext_rows == {SLUG: 10}
    keys = keys_for_tests()
    moved = await encrypt_plaintext(pool, keys, SLUG, batch=3)
    assert moved is not None and moved.rows == 10
    assert await encrypt_plaintext(pool, keys, SLUG) is None  # nothing left
    assert (await key_status(pool)).plaintext_rows == {}
    plain = await pool.fetchval(
        "SELECT count(*) FROM signatures "
        "WHERE num_nonnulls(first_name, last_name, email, postcode) > 0"
    )
    assert plain == 0
    stored = {r["email"]: r for r in await decrypted(pool)}
    assert stored["old5@example.org"]["first_name"] == "Old5"
    assert stored["old5@example.org"]["postcode"] == "00105"
    assert None in stored  # the removed row: nothing kept, nothing encrypted
    assert stored[None]["pii"] is None


def test_keys_commands(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SIGNATURES_STATE_DIR", str(tmp_path))
    runner = CliRunner()
    create = ["campaign", "create", "--slug", SLUG, "--title", "T", "--target", "X"]
    assert runner.invoke(app, [*create, "--goal", "10", "--confirmation", "off"]).exit_code == 0
    asyncio.run(produce(settings, encode(people(7))))
    asyncio.run(run_worker(WorkerKind.PERSIST, settings, asyncio.Event(), drain=True))

    status = runner.invoke(app, ["keys", "status"])
    assert status.exit_code == 0, status.output
    assert SLUG in status.output and "yes" in status.output
    assert MASTER_KEY not in status.output

    generated = runner.invoke(app, ["keys", "generate"])
    new = generated.output.strip()
    assert len(parse_master_key(new)) == 32
    monkeypatch.setenv("SIGNATURES_PREVIOUS_MASTER_KEY", MASTER_KEY)
    monkeypatch.setenv("SIGNATURES_MASTER_KEY", new)
    rotated = runner.invoke(app, ["keys", "rotate", "--reencrypt", "--campaign", SLUG])
    assert rotated.exit_code == 0, rotated.output
    assert "1 data key(s) rewrapped" in rotated.output
    assert f"{SLUG}: 7 rows now under data key v2, 1 old version(s) deleted" in rotated.output
    assert new not in rotated.output and MASTER_KEY not in rotated.output

    monkeypatch.delenv("SIGNATURES_PREVIOUS_MASTER_KEY")
    target = tmp_path / "out.csv"
    exported = runner.invoke(app, ["export", "--campaign", SLUG, "--out", str(target)])
    assert exported.exit_code == 0, exported.output
    assert target.read_text(encoding="utf-8").count(",Rossi,IT,") == 7

    monkeypatch.setenv("SIGNATURES_MASTER_KEY", "too-short")
    broken = runner.invoke(app, ["keys", "rotate"])
    assert broken.exit_code != 0
    message = str(broken.exception)
    assert message.startswith("SIGNATURES_MASTER_KEY: ") and "must be 32 bytes" in message
