"""While the broker does not answer, the API says 503, never 202, and is not ready;
afterwards it recovers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from runtime.broker import EmbeddedBroker
from runtime.campaigns import create_campaign
from runtime.topics import ensure_topics
from tests.conftest import make_settings
from tests.helpers import CAMPAIGN
from tests.pipeline import serving_api

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
async def own_broker() -> AsyncIterator[EmbeddedBroker]:
    broker = EmbeddedBroker()
    await asyncio.to_thread(broker.start)
    try:
        yield broker
    finally:
        broker.resume()
        await asyncio.to_thread(broker.stop)


async def fresh_get(url: str) -> httpx.Response:
    """On a new connection: the pooled ones may have idled out during the outage."""
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(url)


async def test_paused_broker_means_503_then_recovery(
    database_url: str, pool: asyncpg.Pool, own_broker: EmbeddedBroker
) -> None:
    settings = make_settings(database_url, own_broker.bootstrap)
    await ensure_topics(settings, own_broker.bootstrap)
    await create_campaign(pool, CAMPAIGN)

    def body() -> dict[str, object]:
        email = f"outage.{uuid.uuid4().hex[:8]}@example.org"
        return {"first_name": "Ada", "last_name": "L", "email": email, "country": "IT",
                "consent": True, "submission_id": str(uuid.uuid4())}  # fmt: skip

    async with serving_api(settings) as api:
        try:
            async with httpx.AsyncClient(timeout=40) as client:
                url = f"{api}/v1/campaigns/{CAMPAIGN.slug}/signatures"
                assert (await client.post(url, json=body())).status_code == 202
                own_broker.pause()
                answers = await asyncio.gather(*(client.post(url, json=body()) for _ in range(5)))
                assert [a.status_code for a in answers] == [503] * 5
                assert answers[0].json() == {
                    "errors": [{"field": "(service)", "reason": "broker_unavailable"}]
                }
                assert answers[0].headers["retry-after"] == "2"
                ready = await fresh_get(f"{api}/readyz")
                assert ready.status_code == 503
                assert ready.json()["checks"] == {"database": "ok", "broker": "unreachable"}
                own_broker.resume()
                # The client retries the same submission (same id: the idempotency key).
                again = body()
                status = 0
                for _ in range(20):
                    try:  # a pooled connection may have idled out during the outage
                        status = (await client.post(url, json=again)).status_code
                    except httpx.TransportError:
                        status = 0
                    if status == 202:
                        break
                    await asyncio.sleep(0.5)
                assert status == 202
                ready = await fresh_get(f"{api}/readyz")
                assert ready.status_code == 200
                assert ready.json() == {"ready": True, "checks": {"database": "ok", "broker": "ok"}}
        finally:  # before the API stops: its producer must reach the broker
            own_broker.resume()
