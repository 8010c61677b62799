"""Least privilege in PostgreSQL: what each service's role may read and write.

The roles and their grants come from schemas/migrations/0011_roles.sql; the `settings`
fixture makes every service connect as its role's login user (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from consumers.service import WorkerKind, run_worker
from ops.export import export_csv
from runtime.campaigns import create_campaign
from runtime.confirmation import Action, Outcome, new_token, use_token
from runtime.db import create_pool
from runtime.erasure_requests import record_request
from runtime.mailbox import Mailbox
from runtime.roles import LoginRefused, ensure_logins
from runtime.settings import Service, Settings
from tests.conftest import SERVICE_USERS, as_user
from tests.helpers import (
    REQUIRED_CAMPAIGN,
    encode,
    keys_for_tests,
    produce,
    submission,
    wait_until,
)
from tests.pipeline import running_pipeline
from tests.processes import cli_env, signatures

pytestmark = pytest.mark.integration

# Who signed: the API must never read these (nor their encrypted blob, nor any hash).
PII_COLUMNS = [
    "pii",
    "first_name",
    "last_name",
    "email",
    "postcode",
    "email_hash",
    "client_prefix",
    "client_hash",
    "email_domain",
]


@pytest.fixture
async def api_conn(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.database_url_for("api"))
    try:
        yield conn
    finally:
        await conn.close()


async def _store_one(settings: Settings, pool: asyncpg.Pool) -> tuple[uuid.UUID, str]:
    """A stored signature of REQUIRED_CAMPAIGN (pending), through the persist worker's
    role, and the confirmation token its email carries."""
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    record = submission(campaign=REQUIRED_CAMPAIGN.slug)
    await produce(settings, encode([record]))
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(WorkerKind.PERSIST, settings, stop))
    try:
        await wait_until(lambda: pool.fetchval("SELECT count(*) = 1 FROM signatures"), timeout=30)
    finally:
        stop.set()
        await worker
    submission_id = uuid.UUID(str(record["submission_id"]))
    async with pool.acquire() as conn:
        token = await new_token(
            conn,
            submission_id,
            REQUIRED_CAMPAIGN.slug,
            now=datetime.now(UTC),
            ttl=timedelta(days=1),
        )
    return submission_id, token


async def test_service_users_are_members_of_their_role_only(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        services: tuple[tuple[Service, str], ...] = (
            ("api", "signatures_api"),
            ("worker", "signatures_worker"),
            ("operator", "signatures_operator"),
        )
        for service, group in services:
            user = settings.database_url_for(service).split("//", 1)[1].split("@")[0]
            groups = await conn.fetchval(
                """SELECT array_agg(g.rolname::text) FROM pg_auth_members m
                   JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member
                   WHERE u.rolname = $1""",
                user,
            )
            assert groups == [group]
            assert not await conn.fetchval(
                "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = $1",
                user,
            )
    finally:
        await conn.close()


@pytest.mark.parametrize("column", PII_COLUMNS)
async def test_api_cannot_read_who_signed(api_conn: asyncpg.Connection, column: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.fetch(f"SELECT {column} FROM signatures")  # noqa: S608 - fixed names
    # nor find rows by it
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.fetch(
            f"SELECT submission_id FROM signatures WHERE {column} IS NOT NULL"  # noqa: S608
        )


async def test_api_cannot_read_keys_or_addresses(api_conn: asyncpg.Connection) -> None:
    for query in (
        "SELECT * FROM signatures",
        "SELECT * FROM data_keys",
        "SELECT wrapped FROM data_keys",
        "SELECT email FROM erasure_requests",
        "SELECT * FROM erasures",
        "SELECT * FROM dedupe_key",
        "SELECT * FROM dead_letter_replays",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api_conn.fetch(query)
    # and it cannot write signatures (they come through Kafka) nor change the schema
    for statement in (
        "DELETE FROM signatures",
        "UPDATE signatures SET email = NULL",
        "INSERT INTO campaigns (slug, title, target) VALUES ('x', 'x', 'x')",
        "CREATE TABLE stolen (x int)",
        "DROP TABLE signing_rates",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await api_conn.execute(statement)


async def test_api_can_record_a_forget_request_it_cannot_read_back(
    settings: Settings, api_conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    await record_request(api_conn, b"h" * 32, "someone@example.org", "it")
    assert await pool.fetchval("SELECT email FROM erasure_requests") == "someone@example.org"
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api_conn.fetchval("SELECT email FROM erasure_requests")


async def test_worker_reads_and_writes_what_the_workers_need(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await _store_one(settings, pool)  # the persist worker, as signatures_worker
    conn = await asyncpg.connect(settings.database_url_for("worker"))
    try:
        # the mail worker decrypts the address it sends to: blob and data keys
        assert await conn.fetchval("SELECT count(*) FROM signatures WHERE pii IS NOT NULL") == 1
        assert await conn.fetchval("SELECT count(*) FROM data_keys") >= 1
        # but it changes no campaign, partner key or schema
        for statement in (
            "UPDATE campaigns SET title = 'changed'",
            "DELETE FROM partners",
            "DELETE FROM schema_migrations",
            "CREATE TABLE stolen (x int)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()


async def test_operator_exports_the_signers(settings: Settings, pool: asyncpg.Pool) -> None:
    await _store_one(settings, pool)
    await pool.execute("UPDATE signatures SET state = 'confirmed'")
    operator = await create_pool(settings.database_url_for("operator"), max_size=1)
    try:
        out = io.StringIO()
        assert await export_csv(operator, REQUIRED_CAMPAIGN.slug, out, keys_for_tests()) == 1
        assert "Giulia,Rossi" in out.getvalue()
        for statement in ("DROP TABLE signing_rates", "DELETE FROM schema_migrations"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await operator.execute(statement)
    finally:
        await operator.close()


async def test_api_role_confirms_and_removes(settings: Settings, pool: asyncpg.Pool) -> None:
    """The confirmation page's two buttons, run as the API: confirmed and counted, then
    "this wasn't me" erases the signature it cannot read the email hash of."""
    submission_id, token = await _store_one(settings, pool)
    api_pool = await create_pool(settings.database_url_for("api"), max_size=1)
    try:
        assert await use_token(api_pool, token, Action.CONFIRM) == (
            Outcome.CONFIRMED,
            REQUIRED_CAMPAIGN.slug,
        )
        assert (
            await pool.fetchval(
                "SELECT total FROM campaign_totals WHERE campaign = $1", REQUIRED_CAMPAIGN.slug
            )
            == 1
        )
        async with pool.acquire() as conn:
            later = await new_token(
                conn, submission_id, REQUIRED_CAMPAIGN.slug, now=datetime.now(UTC),
                ttl=timedelta(days=1),
            )  # fmt: skip
        # a reminder's link, pressed "this wasn't me" after confirming: the signature
        # stays counted (the API read its state, not who signed)
        assert (await use_token(api_pool, later, Action.REMOVE))[0] is Outcome.ALREADY_CONFIRMED
    finally:
        await api_pool.close()


async def test_api_role_removes_this_wasnt_me(settings: Settings, pool: asyncpg.Pool) -> None:
    submission_id, token = await _store_one(settings, pool)
    api_pool = await create_pool(settings.database_url_for("api"), max_size=1)
    try:
        assert await use_token(api_pool, token, Action.REMOVE) == (
            Outcome.REMOVED,
            REQUIRED_CAMPAIGN.slug,
        )
    finally:
        await api_pool.close()
    assert await pool.fetchval("SELECT count(*) FROM signatures") == 0
    assert await pool.fetchval("SELECT count(*) FROM erasures") == 1
    assert (
        await pool.fetchval(
            "SELECT reason FROM erased_submissions WHERE submission_id = $1", submission_id
        )
        == "erased"
    )
    assert await pool.fetchval("SELECT count(*) FROM confirmation_tokens") == 0


async def test_no_login_is_made_of_a_user_that_may_create_roles(settings: Settings) -> None:
    admin = await asyncpg.connect(settings.database_url)
    try:
        with contextlib.suppress(asyncpg.DuplicateObjectError):
            await admin.execute("CREATE ROLE signatures_test_creator NOLOGIN CREATEROLE")
    finally:
        await admin.close()
    bad = settings.model_copy(
        update={"api_database_url": as_user(settings.database_url, "signatures_test_creator")}
    )
    with pytest.raises(LoginRefused, match="SIGNATURES_API_DATABASE_URL"):
        await ensure_logins(settings.database_url, bad)


async def test_pipeline_runs_each_service_as_its_role(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Sign on the API, stored and counted by the workers, mailed by the mail worker,
    confirmed on the page: every service connected as its role's login user."""
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    slug = REQUIRED_CAMPAIGN.slug
    email = f"giulia.{uuid.uuid4().hex[:8]}@example.org"
    form = {
        "first_name": "Giulia", "last_name": "Rossi", "email": email, "country": "IT",
        "consent": "on", "language": "it", "submission_id": str(uuid.uuid4()),
    }  # fmt: skip
    with Mailbox(tmp_path / "mail") as mailbox:
        s = settings.model_copy(
            update={
                "smtp_host": "127.0.0.1",
                "smtp_port": mailbox.port,
                "smtp_tls": "off",
                "mail_from": "petizioni@example.org",
                "public_url": "https://firme.example.org",
            }
        )
        stop = asyncio.Event()
        mail = asyncio.create_task(run_worker(WorkerKind.MAIL, s, stop))
        try:
            async with running_pipeline(s) as api, httpx.AsyncClient(base_url=api) as client:
                signed = await client.post(f"/v1/campaigns/{slug}/signatures", data=form)
                assert signed.status_code == 202
                await wait_until(lambda: asyncio.sleep(0, len(mailbox.paths()) == 1), 60, 0.1)
                [message] = mailbox.messages()
                body = message.get_body(preferencelist=("plain",))
                assert body is not None
                found = re.search(r"https://firme\.example\.org(/confirm/\S+)", body.get_content())
                assert found is not None
                pressed = await client.post(
                    found[1], data={"action": "confirm"}, headers={"accept": "application/json"}
                )
                assert pressed.json()["outcome"] == "confirmed"

                async def counted() -> bool:
                    totals = (await client.get(f"/v1/campaigns/{slug}/totals")).json()
                    return bool(totals["total"] == 1)

                await wait_until(counted, 30, 0.2)
                users = {
                    row["usename"]
                    for row in await pool.fetch(
                        "SELECT usename FROM pg_stat_activity WHERE datname = current_database()"
                    )
                }
        finally:
            stop.set()
            await mail
    # the owner is only the test's own pool, arranging and checking
    owner = urlsplit(settings.database_url).username
    assert users == {owner, SERVICE_USERS["api"], SERVICE_USERS["worker"]}


@pytest.mark.slow
def test_migrate_makes_the_operators_login_and_their_commands_use_it(
    database_url: str, tmp_path: Path
) -> None:
    user = "signatures_test_cli_operator"
    password = "pw-" + uuid.uuid4().hex
    operator_url = as_user(database_url, f"{user}:{password}")
    env = cli_env(database_url, tmp_path, SIGNATURES_OPERATOR_DATABASE_URL=operator_url)
    migrated = signatures("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert f"operator connects as {user}" in migrated.stdout
    assert password not in migrated.stdout + migrated.stderr

    async def membership() -> tuple[list[str], bool, bool]:
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow(
                """SELECT array_agg(g.rolname::text) AS groups, u.rolcanlogin,
                          a.rolpassword IS NOT NULL AS has_password
                   FROM pg_roles u JOIN pg_authid a ON a.oid = u.oid
                   JOIN pg_auth_members m ON m.member = u.oid
                   JOIN pg_roles g ON g.oid = m.roleid
                   WHERE u.rolname = $1 GROUP BY u.rolcanlogin, a.rolpassword""",
                user,
            )
            assert row is not None
            return row["groups"], row["rolcanlogin"], row["has_password"]
        finally:
            await conn.close()

    assert asyncio.run(membership()) == (["signatures_operator"], True, True)
    # again, with a URL without the password (a .pgpass file has it): it is kept
    env["SIGNATURES_OPERATOR_DATABASE_URL"] = as_user(database_url, user)
    again = signatures("migrate", env=env)
    assert again.returncode == 0, again.stderr
    assert f"operator connects as {user} (updated)" in again.stdout
    assert asyncio.run(membership()) == (["signatures_operator"], True, True)
    # an operator's command connects with the operator's URL: the owner's is unreachable
    env["DATABASE_URL"] = "postgresql://postgres@127.0.0.1:1/nowhere"
    created = signatures(
        "campaign", "create", "--slug", "cecenia", "--title", "Cecenia", "--target", "x",
        "--goal", "1000",
        env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
