"""Small helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from runtime.kafka import make_producer
from runtime.pii import DataKeys, Keyring, parse_master_key, reveal
from runtime.settings import Settings
from schemas.campaign import Confirmation, NewCampaign

# The raw pipeline: every stored signature counts at once. Tests of confirmation by email
# use REQUIRED_CAMPAIGN.
CAMPAIGN = NewCampaign(
    slug="cecenia",
    title="Cecenia",
    target="Autorità federali russe",
    goal=200_000,
    confirmation=Confirmation.OFF,
)
REQUIRED_CAMPAIGN = NewCampaign(
    slug="cecenia-confermate",
    title="Cecenia: fermate gli arresti",
    target="Autorità federali russe",
    goal=200_000,
    confirmation=Confirmation.REQUIRED,
)


def submission(**fields: Any) -> dict[str, Any]:
    """A valid submission for the test campaign, with a unique id and email."""
    token = uuid.uuid4().hex[:10]
    values: dict[str, Any] = {
        "submission_id": str(uuid.uuid4()),
        "campaign": CAMPAIGN.slug,
        "first_name": "Giulia",
        "last_name": "Rossi",
        "email": f"giulia.{token}@example.org",
        "country": "IT",
        "consent": True,
        "source": "web",
        "submitted_at": datetime.now(UTC).isoformat(),
    }
    values.update(fields)
    return values


async def produce(settings: Settings, values: list[bytes | None], topic: str | None = None) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic or settings.topic_submitted, value=value, key=uuid.uuid4().bytes
            )
            for value in values
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def encode(values: list[dict[str, Any]]) -> list[bytes | None]:
    return [json.dumps(v, ensure_ascii=False).encode() for v in values]


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.5
) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(interval)


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, object]]:
    """The events of a server-sent-events response, as they arrive."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
        elif "data" in fields:
            yield {"id": fields.get("id"), **json.loads(fields["data"])}
            fields = {}


def keys_for_tests(master_key: str | None = None) -> DataKeys:
    """The data keys as the tests' processes see them (tests/conftest.py MASTER_KEY)."""
    from tests.conftest import MASTER_KEY  # noqa: PLC0415

    return DataKeys(Keyring(parse_master_key(master_key or MASTER_KEY)))


async def decrypted(pool: asyncpg.Pool, where: str = "TRUE", *args: object) -> list[dict[str, Any]]:
    """Rows of `signatures` (alias s) with their names, email and postcode decrypted, the
    way the mail worker and the export read them; None where they were cleared."""
    async with pool.acquire() as conn:
        query = f"SELECT s.* FROM signatures s WHERE {where} ORDER BY s.id"  # noqa: S608
        rows = await conn.fetch(query, *args)
        revealed = await reveal(conn, keys_for_tests(), rows)
    empty = dict.fromkeys(("first_name", "last_name", "email", "postcode"))
    return [
        {**dict(row), **(pii._asdict() if pii is not None else empty)}
        for row, pii in zip(rows, revealed, strict=True)
    ]
