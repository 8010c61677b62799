"""HTTP → Kafka → PostgreSQL → totals topic, with duplicates and invalid submissions."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from prometheus_client import generate_latest

from consumers.service import WorkerKind, run_worker
from runtime.campaigns import close_campaign, counted_rows, create_campaign
from runtime.kafka import read_to_end
from runtime.partners import create_partner
from runtime.settings import Settings
from runtime.totals_feed import read_published_totals
from schemas.campaign import Confirmation, NewCampaign
from tests.helpers import CAMPAIGN, decrypted
from tests.pipeline import serving_api

pytestmark = pytest.mark.integration


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[str]:
    async with serving_api(settings) as url:
        yield url


def person(n: int, **extra: object) -> dict[str, object]:
    return {
        "first_name": ["Giulia", "Иван", "Ωμέγα", "山田", "Zoë"][n % 5],
        "last_name": "Rossi",
        "email": f"person{n}.{uuid.uuid4().hex[:6]}@example.org",
        "country": ["it", "RU", "GR", "JP", "gb"][n % 5],
        "consent": n % 2 == 0,
        **extra,
    }


async def test_http_to_published_totals(settings: Settings, pool: asyncpg.Pool, api: str) -> None:
    await create_campaign(pool, CAMPAIGN)
    url = f"{api}/v1/campaigns/{CAMPAIGN.slug}/signatures"
    people = [person(n) for n in range(40)]
    async with httpx.AsyncClient(timeout=20) as client:
        answers = await asyncio.gather(*(client.post(url, json=p) for p in people))
        assert [a.status_code for a in answers] == [202] * 40
        ids = {a.json()["submission_id"] for a in answers}
        assert len(ids) == 40

        # The same people again, with their emails in other cases: the very same answer.
        again = await client.post(url, json={**people[0], "email": str(people[0]["email"]).upper()})
        assert again.status_code == 202
        assert set(again.json()) == {"submission_id"}

        # An HTML form post, consent as a checkbox.
        form = {
            "first_name": "Ada",
            "last_name": "L",
            "email": "ada.form@example.org",
            "country": "gb",
            "consent": "on",
            "submit": "Firma",
        }
        posted = await client.post(url, data=form)
        assert posted.status_code == 202, posted.text
        form_dup = await client.post(url, data={**form, "email": "ADA.FORM@EXAMPLE.ORG"})
        assert form_dup.status_code == 202

        # What can be told at the edge: 422 with field names and reasons, never values.
        bad = await client.post(
            url, json={**person(99), "email": "secret-person.example.org", "consent": "yes"}
        )
        assert bad.status_code == 422
        assert bad.json() == {
            "errors": [
                {"field": "email", "reason": "invalid_email"},
                {"field": "consent", "reason": "invalid_field"},
            ]
        }
        assert "secret-person" not in bad.text
        missing = await client.post(url, json={"first_name": "x"})
        assert missing.status_code == 422
        assert {e["field"] for e in missing.json()["errors"]} >= {"email", "last_name", "country"}
        unknown = await client.post(f"{api}/v1/campaigns/nope/signatures", json=person(1))
        assert unknown.status_code == 404
        assert unknown.json()["errors"][0]["reason"] == "unknown_campaign"
        not_json = await client.post(
            url, content=b"{", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 422
        huge = await client.post(
            url,
            content=b"x" * (settings.max_signature_bytes + 1),
            headers={"content-type": "application/json"},
        )
        assert huge.status_code == 413

        await asyncio.wait_for(
            run_worker(WorkerKind.PERSIST, settings, asyncio.Event(), drain=True), 60
        )
        await asyncio.wait_for(
            run_worker(WorkerKind.COUNT, settings, asyncio.Event(), drain=True), 60
        )

        totals = (await client.get(f"{api}/v1/campaigns/{CAMPAIGN.slug}/totals")).json()
        assert (await client.get(f"{api}/v1/campaigns/nope/totals")).status_code == 404

    assert (await counted_rows(pool))[CAMPAIGN.slug] == 41
    assert totals["total"] == 41
    assert totals["by_country"] == {"IT": 8, "RU": 8, "GR": 8, "JP": 8, "GB": 9}
    assert "by_source" not in totals  # sources stay with the operators
    published = await read_published_totals(settings)
    assert published[CAMPAIGN.slug].total == 41
    assert published[CAMPAIGN.slug].version == totals["version"]
    assert await pool.fetchval("SELECT duplicates FROM campaign_totals") == 2
    [stored] = [r for r in await decrypted(pool) if r["email"] == "ada.form@example.org"]
    assert stored["consent"] is True and stored["received_at"] is not None

    # Nothing on the accepted or totals topics names a signer.
    for topic in (settings.topic_accepted, settings.topic_totals):
        blob = b"".join(r.value for r in await read_to_end(settings, topic))
        assert b"@" not in blob and b"Giulia" not in blob


async def test_partner_batch_and_closed_campaign(
    settings: Settings, pool: asyncpg.Pool, api: str
) -> None:
    await create_campaign(pool, CAMPAIGN)
    await create_campaign(
        pool, NewCampaign(confirmation=Confirmation.OFF, slug="over", title="t", target="t", goal=5)
    )
    _, acme_key = await create_partner(pool, "acme", None, confirms=False)
    lines = [json.dumps(person(n)) for n in range(5)] + [
        "{oops",
        json.dumps(person(7, country="XX")),
    ]
    body = "\n".join(lines).encode()
    async with httpx.AsyncClient(timeout=20) as client:
        response = await client.post(
            f"{api}/v1/campaigns/{CAMPAIGN.slug}/signatures/batch",
            content=body,
            headers={"content-type": "application/x-ndjson", "authorization": f"Bearer {acme_key}"},
        )
        assert response.status_code == 200
        result = response.json()
        assert (result["accepted"], result["rejected"]) == (5, 2)
        assert result["results"][5] == {
            "line": 6,
            "status": "rejected",
            "errors": [{"field": "(record)", "reason": "malformed_json"}],
        }
        assert result["results"][6]["errors"] == [{"field": "country", "reason": "invalid_country"}]

        await close_campaign(pool, "over")
        await asyncio.sleep(2.1)  # the API's campaign cache refreshes every 2 s
        closed = await client.post(f"{api}/v1/campaigns/over/signatures", json=person(1))
        assert closed.status_code == 409
        assert closed.json()["errors"][0]["reason"] == "campaign_closed"

        ready = await client.get(f"{api}/readyz")
        assert ready.status_code == 200, ready.text
        assert (await client.get(f"{api}/healthz")).json() == {"status": "ok"}
        # /metrics has a port of its own (`signatures api`); here, this process's registry
        assert (await client.get(f"{api}/metrics")).status_code == 404
        metrics = generate_latest().decode()
        assert (
            'signatures_ingest_submissions_total{outcome="refused",reason="campaign_closed"}'
            in metrics
        )
        assert "example.org" not in metrics
        assert (await client.get(f"{api}/openapi.json")).status_code == 404  # docs are off

    await asyncio.wait_for(
        run_worker(WorkerKind.PERSIST, settings, asyncio.Event(), drain=True), 60
    )
    [row] = await pool.fetch("SELECT source, count(*) FROM signatures GROUP BY source")
    assert (row["source"], row["count"]) == ("partner:acme", 5)
