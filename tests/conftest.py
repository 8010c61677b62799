"""Fixtures: real PostgreSQL and a real Kafka-protocol broker, isolated per test.

The broker is the embedded one (one per session) unless KAFKA_BOOTSTRAP_SERVERS names a
cluster. Every test gets its own database and uuid-named topics and consumer groups.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from pydantic import SecretStr

from runtime import failpoints
from runtime.broker import EmbeddedBroker
from runtime.db import apply_migrations, create_pool
from runtime.roles import ensure_logins
from runtime.settings import Settings
from runtime.topics import ensure_topics

ADMIN_URL = os.environ.get(
    "TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
SECRET = "test-dedupe-secret-0123456789abcdefghijklmnopqrstuvwxyz"
# the master key of every test's data keys (tests/helpers.py decrypts with it)
MASTER_KEY = "dGVzdC1tYXN0ZXIta2V5LTAxMjM0NTY3ODlhYmNkZWY="


def pytest_configure(config: pytest.Config) -> None:
    # every test stays in its tier (tests/tiers.py)
    config.pluginmanager.import_plugin("tests.tiers")


@pytest.fixture
def failpoints_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Failpoints of this process, set per test with `setenv(failpoints.ENV, ...)`: the
    cached specification and the fired counts forgotten before and after."""
    failpoints._active.cache_clear()
    failpoints._fired.clear()
    yield monkeypatch
    monkeypatch.delenv(failpoints.ENV, raising=False)
    failpoints._active.cache_clear()
    failpoints._fired.clear()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    ARTIFACTS.mkdir(exist_ok=True)
    broker = EmbeddedBroker(log_path=ARTIFACTS / "test-broker.log")
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    name = f"sigtest_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    await apply_migrations(url)
    try:
        yield url
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(database_url, max_size=4)
    try:
        yield created
    finally:
        await created.close()


def make_settings(database_url: str, bootstrap: str, **overrides: object) -> Settings:
    suffix = uuid.uuid4().hex[:10]
    values: dict[str, object] = {
        "kafka_bootstrap_servers": bootstrap,
        "database_url": database_url,
        "dedupe_secret": SecretStr(SECRET),
        "master_key": SecretStr(MASTER_KEY),
        "topic_submitted": f"t-{suffix}.submitted",
        "topic_rejected": f"t-{suffix}.rejected",
        "topic_accepted": f"t-{suffix}.accepted",
        "topic_totals": f"t-{suffix}.totals",
        "persist_group": f"g-{suffix}-persist",
        "count_group": f"g-{suffix}-count",
        "partitions": 3,
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 500,
        "batch_timeout_ms": 100,
        "shutdown_grace_s": 5.0,
        "totals_poll_s": 0.2,
        "log_format": "json",
        # every country shown on its own, so tests can check breakdowns exactly; tests of
        # the public merge into "other" set their own threshold
        "public_min_count": 1,
        # tests send many signatures from one address (127.0.0.1) and one email domain
        # (example.org): trusted load, as the bench's. tests/test_rate_limits.py and
        # tests/test_flags.py turn these on.
        "rate_limits": False,
        "flags": False,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


# The login users the services connect as, one per role (schemas/migrations/0011_roles.sql);
# cluster-wide, like the roles, and without a password (the test server trusts 127.0.0.1).
SERVICE_USERS = {
    "api": "signatures_test_api",
    "worker": "signatures_test_worker",
    "operator": "signatures_test_operator",
}


def as_user(database_url: str, user: str) -> str:
    parts = urlsplit(database_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


async def under_roles(s: Settings) -> Settings:
    """The settings with every kind of service connecting as its own role's login user."""
    update = {
        f"{service}_database_url": as_user(s.database_url, user)
        for service, user in SERVICE_USERS.items()
    }
    roled = s.model_copy(update=update)
    for _ in range(3):  # tests of other processes may create the same users at once
        try:
            await ensure_logins(s.database_url, roled)
            break
        except (asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
            continue
    return roled


@pytest.fixture
async def settings(database_url: str, kafka_bootstrap: str) -> Settings:
    """Every service the test starts (API, workers, operators' commands) connects as its
    role's login user; the `pool` fixture stays the owner, for arranging and checking."""
    s = await under_roles(make_settings(database_url, kafka_bootstrap))
    await ensure_topics(s, kafka_bootstrap)
    return s
