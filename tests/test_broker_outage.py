"""While the broker does not answer, the API says 503, never 202, and is not ready;
afterwards it recovers, and a client that retries the very same submissions (same
`submission_id`, the idempotency key) gets each one stored exactly once: also the one
the broker had taken before its acknowledgement was lost and the client told 503."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from consumers.service import WorkerKind, run_worker
from runtime import failpoints
from runtime.broker import EmbeddedBroker
from runtime.campaigns import create_campaign
from runtime.kafka import read_to_end
from runtime.settings import Settings
from runtime.topics import ensure_topics
from runtime.totals_feed import read_published_totals
from tests.conftest import make_settings
from tests.helpers import CAMPAIGN, wait_until
from tests.invariants import lag
from tests.pipeline import serving_api

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UNAVAILABLE = {"errors": [{"field": "(service)", "reason": "broker_unavailable"}]}


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


def body() -> dict[str, object]:
    email = f"outage.{uuid.uuid4().hex[:8]}@example.org"
    return {"first_name": "Ada", "last_name": "L", "email": email, "country": "IT",
            "consent": True, "submission_id": str(uuid.uuid4())}  # fmt: skip


async def retried_until_accepted(
    client: httpx.AsyncClient, url: str, sent: dict[str, object]
) -> None:
    """The client's retry: the same body again, until the API says 202."""
    status = 0
    for _ in range(40):
        try:  # a pooled connection may have idled out during the outage
            answer = await client.post(url, json=sent)
            status = answer.status_code
        except httpx.TransportError:
            status = 0
        if status == 202:
            assert answer.json() == {"submission_id": sent["submission_id"]}
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{sent['submission_id']} never accepted (last status {status})")


async def has(pool: asyncpg.Pool, sent: dict[str, object]) -> bool:
    query = "SELECT EXISTS (SELECT FROM signatures WHERE submission_id = $1::uuid)"
    return bool(await pool.fetchval(query, sent["submission_id"]))


async def drained(settings: Settings, pool: asyncpg.Pool) -> bool:
    """Both groups caught up, and the stored total published."""
    if any((await lag(settings)).values()):
        return False
    published = (await read_published_totals(settings)).get(CAMPAIGN.slug)
    total = await pool.fetchval("SELECT total FROM campaign_totals")
    return published is not None and published.total == total


async def stored(pool: asyncpg.Pool) -> dict[str, int]:
    """How many rows each submission id has."""
    rows = await pool.fetch("SELECT submission_id, count(*) AS n FROM signatures GROUP BY 1")
    return {str(r["submission_id"]): r["n"] for r in rows}


async def test_a_broker_outage_means_503_and_retried_bodies_are_stored_once(
    database_url: str,
    pool: asyncpg.Pool,
    own_broker: EmbeddedBroker,
    failpoints_env: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(database_url, own_broker.bootstrap)
    await ensure_topics(settings, own_broker.bootstrap)
    await create_campaign(pool, CAMPAIGN)
    before, lost, during = body(), body(), [body() for _ in range(5)]

    # The whole pipeline runs through it all: the API here, a persist worker, a counter.
    stop = asyncio.Event()
    pipeline = [
        asyncio.create_task(run_worker(kind, settings, stop))
        for kind in (WorkerKind.PERSIST, WorkerKind.COUNT)
    ]
    try:
        async with serving_api(settings) as api, httpx.AsyncClient(timeout=40) as client:
            url = f"{api}/v1/campaigns/{CAMPAIGN.slug}/signatures"
            assert (await client.post(url, json=before)).status_code == 202

            # The broker takes `lost`, but its acknowledgement never reaches the API.
            failpoints_env.setenv(failpoints.ENV, "sign.after_broker_ack=1*timeout")
            failpoints._active.cache_clear()
            answer = await client.post(url, json=lost)
            assert (answer.status_code, answer.json()) == (503, UNAVAILABLE)
            assert failpoints._fired["sign.after_broker_ack"] == 1
            # It did reach the broker: the pipeline stores it, before any retry.
            await wait_until(lambda: has(pool, lost), timeout=60, interval=0.1)

            own_broker.pause()
            try:
                answers = await asyncio.gather(*(client.post(url, json=b) for b in during))
                assert [a.status_code for a in answers] == [503] * 5
                assert answers[0].json() == UNAVAILABLE
                assert answers[0].headers["retry-after"] == "2"
                ready = await fresh_get(f"{api}/readyz")
                assert ready.status_code == 503
                assert ready.json()["checks"] == {"database": "ok", "broker": "unreachable"}
            finally:  # before the API stops: its producer must reach the broker
                own_broker.resume()

            # The client retries the very bodies it was told 503 for.
            for sent in (lost, *during):
                await retried_until_accepted(client, url, sent)
            ready = await fresh_get(f"{api}/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"ready": True, "checks": {"database": "ok", "broker": "ok"}}

            await wait_until(lambda: drained(settings, pool), timeout=90)
    finally:
        stop.set()
        ends = await asyncio.wait_for(asyncio.gather(*pipeline, return_exceptions=True), 60)
    assert not [end for end in ends if isinstance(end, BaseException)], ends  # none died

    ids = [str(b["submission_id"]) for b in (before, lost, *during)]
    on_topic = Counter(
        json.loads(r.value)["submission_id"]
        for r in await read_to_end(settings, settings.topic_submitted, timeout=30)
        if r.value is not None
    )
    assert set(on_topic) == set(ids)
    assert on_topic[lost["submission_id"]] == 2  # taken before its 503, and again on retry

    assert await stored(pool) == dict.fromkeys(ids, 1)
    kept = await pool.fetchrow("SELECT total, duplicates FROM campaign_totals")
    assert kept is not None
    assert tuple(kept) == (len(ids), 0)  # a retry is neither a new signer nor a duplicate
    assert (await read_published_totals(settings))[CAMPAIGN.slug].total == len(ids)
