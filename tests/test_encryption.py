"""Encryption at rest of signers' names, email and postcode (runtime/pii.py)."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest

from consumers.outbox import Claim, claim
from ops.export import export_csv
from runtime.campaigns import create_campaign
from runtime.pii import (
    PII_COLUMNS,
    DataKey,
    DecryptionError,
    KeyProblem,
    Keyring,
    Pii,
    deserialise,
    new_master_key,
    parse_master_key,
    reveal,
    serialise,
    unwrap,
    wrap,
)
from runtime.settings import ConfigError, Settings, load_settings
from tests.helpers import CAMPAIGN, REQUIRED_CAMPAIGN, decrypted, keys_for_tests, wait_until
from tests.pipeline import running_pipeline

# --- the crypto module -----------------------------------------------------------------


def _key(key_id: int = 1) -> DataKey:
    return DataKey(key_id, "cecenia", 1, os.urandom(32))


@pytest.mark.parametrize(
    "pii",
    [
        Pii("Giulia", "Rossi", "giulia@example.org", "00184"),
        Pii("山田", "Ωμέγα-Иван", "zoë@exämple.org", None),
        Pii("", "", "a@b.example", ""),
    ],
)
def test_round_trip(pii: Pii) -> None:
    key, sid = _key(), uuid.uuid4()
    blob = key.seal(serialise(*pii), sid, "cecenia")
    assert pii.email.encode() not in blob
    assert deserialise(key.open(blob, sid, "cecenia")) == pii
    [many] = key.seal_many([(serialise(*pii), sid)], "cecenia")
    assert many != blob  # a fresh nonce every time
    assert deserialise(key.open(many, sid, "cecenia")) == pii


def test_the_wrong_key_fails() -> None:
    sid = uuid.uuid4()
    blob = _key().seal(serialise("Giulia", "Rossi", "g@example.org", None), sid, "cecenia")
    with pytest.raises(DecryptionError):
        _key().open(blob, sid, "cecenia")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DecryptionError):
        _key().open(tampered, sid, "cecenia")


def test_a_blob_moved_to_another_row_or_campaign_fails() -> None:
    key, mine, other = _key(), uuid.uuid4(), uuid.uuid4()
    blob = key.seal(serialise("Giulia", "Rossi", "g@example.org", None), mine, "cecenia")
    with pytest.raises(DecryptionError):
        key.open(blob, other, "cecenia")  # swapped between rows
    with pytest.raises(DecryptionError):
        key.open(blob, mine, "other-campaign")  # moved to another campaign
    assert key.open(blob, mine, "cecenia")


def test_data_keys_unwrap_only_with_their_master_key_and_campaign() -> None:
    master, data = os.urandom(32), os.urandom(32)
    wrapped = wrap(master, data, "cecenia", 1)
    assert unwrap(master, wrapped, "cecenia", 1) == data
    with pytest.raises(DecryptionError):
        unwrap(os.urandom(32), wrapped, "cecenia", 1)
    with pytest.raises(DecryptionError):
        unwrap(master, wrapped, "other", 1)
    with pytest.raises(DecryptionError):
        unwrap(master, wrapped, "cecenia", 2)
    keyring = Keyring(os.urandom(32), previous=master)
    assert keyring.master_for(Keyring(master).fingerprint) == master
    with pytest.raises(KeyProblem):
        Keyring(os.urandom(32)).master_for(Keyring(master).fingerprint)


def test_master_key_formats() -> None:
    raw = os.urandom(32)
    for text in (
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        new_master_key(),
    ):
        assert len(parse_master_key(text)) == 32
    assert parse_master_key(base64.b64encode(raw).decode()) == raw


@pytest.mark.parametrize("bad", ["not base64 at all!", "c2hvcnQ=", "A" * 60])
def test_a_malformed_master_key_is_one_line_naming_the_variable(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIGNATURES_MASTER_KEY", bad)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("SIGNATURES_MASTER_KEY: ")
    assert "\n" not in message
    assert bad not in message  # a secret, even a wrong one, is not repeated


def test_the_key_file_of_up_and_production_never_falling_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIGNATURES_MASTER_KEY", raising=False)
    monkeypatch.setenv("SIGNATURES_STATE_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^SIGNATURES_MASTER_KEY: not set"):
        load_settings().require_master_keys()

    local = load_settings().with_local_secret()  # what `up` and `demo` do
    path = tmp_path / "master-key"
    assert path.stat().st_mode & 0o777 == 0o600
    from_file = parse_master_key(path.read_text())
    assert local.require_master_keys().master == from_file
    # any other command on this machine finds it by itself
    assert load_settings().require_master_keys().master == from_file
    # and the next `up` keeps it
    assert load_settings().with_local_secret().require_master_keys().master == from_file

    # production: the variable wins, the file is not read, not even when it is broken
    production = new_master_key()
    monkeypatch.setenv("SIGNATURES_MASTER_KEY", production)
    path.write_text("broken")
    assert load_settings().require_master_keys().master == parse_master_key(production)
    monkeypatch.delenv("SIGNATURES_MASTER_KEY")
    with pytest.raises(ConfigError, match=r"^SIGNATURES_MASTER_KEY: the key file"):
        load_settings().require_master_keys()


# --- the real pipeline and pg_dump -----------------------------------------------------


def _sentinels() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {
        "first_name": f"Sentinelfirst{tag}",
        "last_name": f"Sentinellast{tag}",
        "email": f"sentinel.{tag}@example.org",
        "postcode": f"SP{tag}",
    }


def pg_dump(database_url: str) -> str:
    result = subprocess.run(
        ["pg_dump", "--data-only", "--inserts", database_url],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout


@pytest.mark.slow
@pytest.mark.integration
async def test_nothing_personal_in_a_dump_and_readable_where_needed(
    settings: Settings, pool: asyncpg.Pool, database_url: str
) -> None:
    await create_campaign(pool, CAMPAIGN)
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    counted, pending = _sentinels(), _sentinels()
    async with running_pipeline(settings) as api, httpx.AsyncClient(timeout=20) as client:
        for campaign, person in ((CAMPAIGN, counted), (REQUIRED_CAMPAIGN, pending)):
            answer = await client.post(
                f"{api}/v1/campaigns/{campaign.slug}/signatures",
                json={**person, "country": "IT", "consent": True},
            )
            assert answer.status_code == 202

        async def stored() -> bool:
            return bool(await pool.fetchval("SELECT count(*) FROM signatures") == 2)

        await wait_until(stored, 60, 0.2)

    dump = pg_dump(database_url)
    ids = [
        str(r["submission_id"]) for r in await pool.fetch("SELECT submission_id FROM signatures")
    ]
    assert all(i in dump for i in ids)  # the dump holds the rows
    assert "COPY" not in dump and "INSERT INTO public.data_keys" in dump
    leaked = [
        value
        for person in (counted, pending)
        for value in person.values()
        if value.casefold() in dump.casefold()
    ]
    assert leaked == []
    rows = await pool.fetch(
        "SELECT first_name, last_name, email, postcode, pii, key_id FROM signatures"
    )
    for row in rows:
        assert (row["first_name"], row["last_name"], row["email"], row["postcode"]) == (
            None,
            None,
            None,
            None,
        )
        assert row["pii"] is not None and row["key_id"] is not None

    # ... and readable where it is needed: the export (names) ...
    out = io.StringIO()
    assert await export_csv(pool, CAMPAIGN.slug, out, keys_for_tests()) == 1
    assert f"{counted['first_name']},{counted['last_name']},IT," in out.getvalue()
    # ... the mail worker's claim (the address) ...
    # (queued as the mail worker's consume loop queues it: consumers/mail.py)
    await pool.execute(
        "INSERT INTO mail_outbox (prompted_by, kind, submission_id, campaign) "
        "SELECT submission_id, 'confirm', submission_id, campaign FROM signatures "
        "WHERE state = 'pending'"
    )
    async with pool.acquire() as conn:
        claimed = await claim(
            conn,
            keys_for_tests(),
            lease=timedelta(seconds=30),
            ttl=timedelta(days=1),
            public_url="http://localhost",
        )
    assert isinstance(claimed, Claim)
    assert claimed.letter.to == pending["email"]
    # ... and whatever decrypts with the master key
    by_email = {r["email"]: r for r in await decrypted(pool)}
    assert by_email[counted["email"]]["postcode"] == counted["postcode"]
    assert by_email[pending["email"]]["first_name"] == pending["first_name"]

    # without the master key, nothing opens
    async with pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT {PII_COLUMNS} FROM signatures s")  # noqa: S608
        assert len(await reveal(conn, keys_for_tests(), rows)) == 2
        with pytest.raises(KeyProblem):
            await reveal(conn, keys_for_tests(new_master_key()), rows)
