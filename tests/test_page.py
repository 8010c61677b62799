"""The petition page, the widget and the totals over HTTP: rendering, caching, streaming."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import date

import asyncpg
import httpx
import pytest

from ingest.i18n import choose_language
from runtime.campaigns import create_campaign, post_update
from runtime.settings import Settings
from schemas.campaign import NewCampaignUpdate
from tests.helpers import CAMPAIGN, sse_events
from tests.pipeline import running_pipeline


@pytest.mark.parametrize(
    ("requested", "header", "chosen"),
    [
        (None, "it-IT,it;q=0.9,en;q=0.8", "it"),
        (None, "de-DE,en;q=0.5,it;q=0.4", "en"),
        (None, "fr", "en"),
        (None, "", "en"),
        ("it", "en", "it"),
        ("xx", "it", "it"),
        (None, "en;q=0.1,it;q=0.9", "it"),
    ],
)
def test_language_from_the_query_then_the_browser(
    requested: str | None, header: str, chosen: str
) -> None:
    assert choose_language(requested, header) == chosen


@pytest.fixture
async def api(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[str]:
    await create_campaign(pool, CAMPAIGN)
    async with running_pipeline(settings) as url:
        yield url


def form(**fields: str) -> dict[str, str]:
    values = {
        "first_name": "Giulia", "last_name": "Rossi", "country": "IT", "consent": "on",
        "email": f"giulia.{uuid.uuid4().hex[:8]}@example.org", "language": "it",
    }  # fmt: skip
    return {**values, **fields}


BROWSER = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


async def wait_total(client: httpx.AsyncClient, at_least: int) -> dict[str, object]:
    async with asyncio.timeout(30):
        while True:
            totals = (await client.get(f"/v1/campaigns/{CAMPAIGN.slug}/totals")).json()
            if totals["total"] >= at_least:
                return dict(totals)
            await asyncio.sleep(0.1)


@pytest.mark.integration
async def test_page_in_italian_and_english_with_strict_headers(
    api: str, pool: asyncpg.Pool
) -> None:
    await post_update(
        pool, CAMPAIGN.slug,
        NewCampaignUpdate(posted_on=date(2026, 11, 20), title="Consegna", body="<i>Fatto</i>"),
    )  # fmt: skip
    async with httpx.AsyncClient(base_url=api) as client:
        italian = await client.get(f"/campaigns/{CAMPAIGN.slug}", headers={"accept-language": "it"})
        english = await client.get(f"/campaigns/{CAMPAIGN.slug}?lang=en")
        missing = await client.get("/campaigns/nessuna")
    assert italian.status_code == english.status_code == 200
    assert "A: Autorità federali russe" in italian.text
    assert "Obiettivo 200.000 firme" in italian.text
    assert "20 novembre 2026" in italian.text
    assert "To: Autorità federali russe" in english.text
    assert "Goal: 200,000 signatures" in english.text
    assert "November 20, 2026" in english.text
    assert '<html lang="it">' in italian.text and '<html lang="en">' in english.text
    assert "&lt;i&gt;Fatto&lt;/i&gt;" in italian.text  # content is text, never markup
    assert 'action="/v1/campaigns/cecenia/signatures"' in italian.text
    csp = italian.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "<script>" not in italian.text  # no inline script for the CSP to allow
    assert missing.status_code == 404


@pytest.mark.integration
async def test_form_post_from_a_browser_gets_the_same_thanks_twice(api: str) -> None:
    url = f"/v1/campaigns/{CAMPAIGN.slug}/signatures"
    person = form(first_name="<b>Anna</b>")
    async with httpx.AsyncClient(base_url=api) as client:
        first = await client.post(url, data=person, headers=BROWSER)
        again = await client.post(url, data={**person, "email": person["email"].upper()},
                                  headers=BROWSER)  # fmt: skip
        bad = await client.post(url, data=form(email="non-è-una-email"), headers=BROWSER)
        script = await client.post(url, data=form())  # no Accept: text/html → JSON
        totals = await wait_total(client, 2)
    assert first.status_code == again.status_code == 202
    assert first.text == again.text  # nothing tells a repeat signer apart
    assert "Grazie, &lt;b&gt;Anna&lt;/b&gt;!" in first.text
    assert first.headers["content-type"].startswith("text/html")
    assert bad.status_code == 422
    assert "Indirizzo email non valido" in bad.text
    assert 'value="non-è-una-email"' in bad.text  # the form comes back filled in
    assert script.status_code == 202 and "submission_id" in script.json()
    assert totals["total"] == 2


@pytest.mark.integration
async def test_totals_are_cacheable_by_version(api: str) -> None:
    url = f"/v1/campaigns/{CAMPAIGN.slug}/totals"
    async with httpx.AsyncClient(base_url=api) as client:
        first = await client.get(url)
        tag = first.headers["etag"]
        assert first.headers["cache-control"] == "public, max-age=2"
        cached = await client.get(url, headers={"if-none-match": tag})
        assert cached.status_code == 304 and not cached.content
        await client.post(f"/v1/campaigns/{CAMPAIGN.slug}/signatures", data=form())
        await wait_total(client, 1)
        fresh = await client.get(url, headers={"if-none-match": tag})
    assert fresh.status_code == 200
    assert fresh.headers["etag"] != tag
    assert fresh.json()["total"] == 1


@pytest.mark.integration
async def test_stream_sends_current_totals_then_each_new_version(api: str) -> None:
    stream_url = f"/v1/campaigns/{CAMPAIGN.slug}/totals/stream"
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        async with client.stream("GET", stream_url) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
            current = await anext(events)
            assert current["total"] == 0
            await client.post(f"/v1/campaigns/{CAMPAIGN.slug}/signatures", data=form())
            async with asyncio.timeout(30):
                later = await anext(events)
        assert later["total"] == 1 and int(str(later["id"])) > int(str(current["id"]))
        # resuming with the last version seen: nothing until something newer exists
        headers = {"last-event-id": str(later["id"])}
        async with client.stream("GET", stream_url, headers=headers) as resumed:
            await client.post(f"/v1/campaigns/{CAMPAIGN.slug}/signatures", data=form())
            async with asyncio.timeout(30):
                next_one = await anext(sse_events(resumed))
        assert next_one["total"] == 2
        missing = await client.get("/v1/campaigns/nessuna/totals/stream")
    assert missing.status_code == 404


@pytest.mark.integration
async def test_widget_can_be_embedded_anywhere(api: str) -> None:
    async with httpx.AsyncClient(base_url=api) as client:
        widget = await client.get(f"/campaigns/{CAMPAIGN.slug}/widget?lang=it")
    assert widget.status_code == 200
    assert "frame-ancestors *" in widget.headers["content-security-policy"]
    assert 'id="count"' in widget.text and "Firma anche tu" in widget.text
