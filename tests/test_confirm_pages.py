"""The confirmation link's pages over HTTP, against the real PostgreSQL and broker.

Pending signatures are made the real way (submissions on the topic, a persist worker
drained), tokens as the mail worker makes them; then a person follows the link: the page
(GET) changes nothing, only its buttons (POST) confirm or remove, once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import structlog

from consumers.service import WorkerKind, run_worker
from runtime.campaigns import close_campaign, create_campaign
from runtime.confirmation import new_token
from runtime.settings import Settings
from runtime.totals_feed import read_published_totals
from schemas.campaign import NewCampaign
from tests.helpers import CAMPAIGN, REQUIRED_CAMPAIGN, decrypted, encode, produce, submission
from tests.pipeline import serving_api

pytestmark = pytest.mark.integration

REQ = REQUIRED_CAMPAIGN.slug
BROWSER = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
JSON = {"accept": "application/json"}
CONFIRM = {"action": "confirm"}
REMOVE = {"action": "remove"}


@pytest.fixture
async def api(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    async with (
        serving_api(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield client


async def drain(settings: Settings) -> dict[str, int]:
    stats = await asyncio.wait_for(
        run_worker(WorkerKind.PERSIST, settings, asyncio.Event(), drain=True), 60
    )
    return stats.outcomes


async def pending_signatures(
    settings: Settings, count: int = 1, campaign: str = REQ, **fields: Any
) -> list[dict[str, Any]]:
    """Signatures stored pending through the real path: topic, then a persist worker."""
    people = [
        submission(campaign=campaign, postcode="00184", first_name="Ottavia", **fields)
        for _ in range(count)
    ]
    await produce(settings, encode(people))
    assert (await drain(settings))["inserted"] == count
    return people


async def token(pool: asyncpg.Pool, person: dict[str, Any], campaign: str = REQ) -> str:
    async with pool.acquire() as conn:
        return await new_token(
            conn,
            uuid.UUID(person["submission_id"]),
            campaign,
            now=datetime.now(UTC),
            ttl=timedelta(days=7),
        )


async def row(pool: asyncpg.Pool, person: dict[str, Any]) -> dict[str, Any]:
    [found] = await decrypted(pool, "s.submission_id = $1::uuid", person["submission_id"])
    return found


async def totals(pool: asyncpg.Pool, campaign: str = REQ) -> tuple[int, int]:
    """(total, version): what is public, and what moves when it changes."""
    found = await pool.fetchrow(
        "SELECT total, version FROM campaign_totals WHERE campaign = $1", campaign
    )
    assert found is not None
    return found["total"], found["version"]


def assert_private_headers(response: httpx.Response) -> None:
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp


async def test_the_page_shows_the_campaign_and_changes_nothing(
    settings: Settings, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    [person] = await pending_signatures(settings)
    link = f"/confirm/{await token(pool, person)}"
    before = await totals(pool)

    italian = await api.get(link, headers={**BROWSER, "accept-language": "it-IT,it"})
    english = await api.get(f"{link}?lang=en", headers=BROWSER)
    prefetched = [await api.get(link) for _ in range(3)]  # a mail scanner, again and again
    script = await api.get(link, headers=JSON)

    assert italian.status_code == english.status_code == script.status_code == 200
    assert all(p.status_code == 200 for p in prefetched)
    assert "Conferma la tua firma" in italian.text and "Non ero io" in italian.text
    assert "Confirm my signature" in english.text and "This wasn&#39;t me" in english.text
    for page in (italian, english):
        assert REQUIRED_CAMPAIGN.title in page.text and REQUIRED_CAMPAIGN.target in page.text
        assert 'method="post"' in page.text
        assert 'name="action" value="confirm"' in page.text
        assert 'name="action" value="remove"' in page.text
        for private in ("Ottavia", "Rossi", person["email"], "00184", "@"):
            assert private not in page.text
        assert "<script>" not in page.text
        assert_private_headers(page)
    assert script.json() == {"outcome": None, "usable": True}
    assert (await row(pool, person))["state"] == "pending"
    assert await totals(pool) == before
    assert (
        await pool.fetchval("SELECT count(*) FROM confirmation_tokens WHERE used_at IS NULL") == 1
    )


async def test_confirm_counts_once_however_often_it_is_pressed(
    settings: Settings, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    [person] = await pending_signatures(settings)
    secret = await token(pool, person)
    link = f"/confirm/{secret}"
    total, version = await totals(pool)

    with structlog.testing.capture_logs() as logs:
        confirmed = await api.post(f"{link}?lang=en", data=CONFIRM, headers=BROWSER)
    after = await totals(pool)
    again = await api.post(f"{link}?lang=en", data=CONFIRM, headers=BROWSER)
    later_link = f"/confirm/{await token(pool, person)}"  # a reminder sent meanwhile
    later = await api.post(later_link, data=CONFIRM, headers=JSON)
    later_page = await api.get(later_link, headers=JSON)

    assert confirmed.status_code == 200
    assert "Thank you: your signature is confirmed" in confirmed.text
    assert f'href="/campaigns/{REQ}?lang=en"' in confirmed.text
    assert_private_headers(confirmed)
    assert (await row(pool, person))["state"] == "confirmed"
    assert after == (total + 1, version + 1)
    # pressing again, or another link of the same signature: the same thanks, nothing more
    assert again.status_code == 200 and "your signature is confirmed" in again.text
    assert (later.status_code, later.json()) == (200, {"outcome": "already_confirmed"})
    assert (later_page.status_code, later_page.json()["outcome"]) == (200, "already_confirmed")
    assert_private_headers(later)
    assert await totals(pool) == after
    # the request line names the route, never the token
    assert logs and all(secret not in repr(line) for line in logs)
    assert any(line.get("route") == "/confirm/{token:path}" for line in logs)


async def test_twenty_presses_at_once_count_once(
    settings: Settings, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    [person] = await pending_signatures(settings)
    link = f"/confirm/{await token(pool, person)}"
    total, version = await totals(pool)

    answers = await asyncio.gather(*(api.post(link, data=CONFIRM, headers=JSON) for _ in range(20)))

    assert {a.status_code for a in answers} == {200}
    outcomes = sorted(a.json()["outcome"] for a in answers)
    assert outcomes == ["already_confirmed"] * 19 + ["confirmed"]
    assert await totals(pool) == (total + 1, version + 1)
    confirmed = await pool.fetchval("SELECT count(*) FROM signatures WHERE state = 'confirmed'")
    assert confirmed == 1


async def test_two_links_of_one_signature_pressed_at_once_count_once(
    settings: Settings, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    [person] = await pending_signatures(settings)
    links = [f"/confirm/{await token(pool, person)}" for _ in range(2)]  # email, then reminder
    total, version = await totals(pool)

    answers = await asyncio.gather(
        *(api.post(links[n % 2], data=CONFIRM, headers=JSON) for n in range(20))
    )

    # every press reads what the one before it committed: no deadlock, no stale answer
    assert {a.status_code for a in answers} == {200}
    outcomes = sorted(a.json()["outcome"] for a in answers)
    assert outcomes == ["already_confirmed"] * 19 + ["confirmed"]
    assert await totals(pool) == (total + 1, version + 1)


async def test_an_expired_link_counts_nothing(
    settings: Settings, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    [person] = await pending_signatures(settings)
    link = f"/confirm/{await token(pool, person)}"
    await pool.execute("UPDATE confirmation_tokens SET expires_at = now() - interval '1 minute'")
    before = await totals(pool)

    page = await api.get(f"{link}?lang=en", headers=BROWSER)
    pressed = await api.post(f"{link}?lang=en", data=CONFIRM, headers=BROWSER)
    script = await api.post(link, data=CONFIRM, headers=JSON)

    assert page.status_code == pressed.status_code == script.status_code == 410
    assert "This link has expired" in pressed.text and "sign" in pressed.text
    assert f'href="/campaigns/{REQ}?lang=en#sign-heading"' in pressed.text
    assert script.json() == {"outcome": "expired"}
    assert_private_headers(pressed)
    assert (await row(pool, person))["state"] == "pending"
    assert await totals(pool) == before


async def test_a_token_presented_for_another_campaign_is_unknown(
    settings: Settings, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    other = NewCampaign(slug="altra-campagna", title="Altra", target="Altri", goal=10)
    await create_campaign(pool, other)
    [person] = await pending_signatures(settings)
    secret = (await token(pool, person)).split(".", 1)[1]
    before = await totals(pool), await totals(pool, other.slug)

    page = await api.get(f"/confirm/{other.slug}.{secret}", headers=BROWSER)
    pressed = await api.post(f"/confirm/{other.slug}.{secret}", data=CONFIRM, headers=JSON)

    assert page.status_code == pressed.status_code == 404
    assert "Altra" not in page.text and REQUIRED_CAMPAIGN.title not in page.text
    assert pressed.json() == {"outcome": "unknown"}
    assert (await row(pool, person))["state"] == "pending"
    assert (await totals(pool), await totals(pool, other.slug)) == before


MALFORMED = [
    "",
    "garbage",
    "x" * 5_000,
    "città.ñandú-☃-🙂",
    f"{REQ}.{'A' * 43}",  # well formed, never issued
    f"{REQ}.{'A' * 42}/B",
    "a/b/c",
    "..%2F..%2Fetc%2Fpasswd",
    "%00%ff%fe",
    f"{REQ}.%41%41%41",
    "nessuna-campagna." + "B" * 43,
]


@pytest.mark.parametrize("bad", MALFORMED)
async def test_malformed_tokens_get_the_not_valid_page(
    settings: Settings, pool: asyncpg.Pool, api: httpx.AsyncClient, bad: str
) -> None:
    page = await api.get(f"/confirm/{bad}?lang=en", headers=BROWSER)
    pressed = await api.post(f"/confirm/{bad}?lang=en", data=CONFIRM, headers=BROWSER)
    script = await api.post(f"/confirm/{bad}", data=REMOVE, headers=JSON)

    for answer in (page, pressed):
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("text/html")
        assert "This link is not valid" in answer.text
        assert "Traceback" not in answer.text and "Error" not in answer.text
        assert_private_headers(answer)
    assert (script.status_code, script.json()) == (404, {"outcome": "unknown"})


async def test_a_missing_or_unknown_action_changes_nothing(
    settings: Settings, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    [person] = await pending_signatures(settings)
    link = f"/confirm/{await token(pool, person)}"
    before = await totals(pool)

    answers = [
        await api.post(f"{link}?lang=en", headers=BROWSER),
        await api.post(f"{link}?lang=en", data={"action": "count-twice"}, headers=BROWSER),
        await api.post(f"{link}?lang=en", content=b"action=confirm&action=remove",
                       headers={**BROWSER, "content-type": "application/x-www-form-urlencoded"}),
        await api.post(link, data={"action": ""}, headers=JSON),
    ]  # fmt: skip

    assert [a.status_code for a in answers] == [400] * 4
    assert "choose one of the two buttons" in answers[0].text
    assert answers[3].json()["errors"][0]["field"] == "action"
    for answer in answers:
        assert_private_headers(answer)
    assert (await row(pool, person))["state"] == "pending"
    assert await totals(pool) == before
    assert (
        await pool.fetchval("SELECT count(*) FROM confirmation_tokens WHERE used_at IS NULL") == 1
    )


async def test_this_wasnt_me_forgets_the_person_who_may_still_sign(
    settings: Settings, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    [person] = await pending_signatures(settings)
    link = f"/confirm/{await token(pool, person)}"
    before = await totals(pool)

    removed = await api.post(link, data=REMOVE, headers={**BROWSER, "accept-language": "it"})

    assert removed.status_code == 200
    assert "Abbiamo cancellato la firma" in removed.text
    assert f'href="/campaigns/{REQ}?lang=it#sign-heading"' in removed.text
    assert_private_headers(removed)
    # forgotten through the one erasure path: the row, its links and queued emails are
    # gone, and a suppression for this campaign keeps a replay from bringing it back
    assert await pool.fetchval(
        "SELECT count(*) FROM signatures WHERE submission_id = $1::uuid", person["submission_id"]
    ) == 0  # fmt: skip
    assert await pool.fetchval("SELECT count(*) FROM confirmation_tokens") == 0
    assert await pool.fetchval("SELECT campaign FROM erasures") == REQ
    assert await totals(pool) == before

    # pressing "confirm" afterwards, on this link or a new one, counts nothing
    confirm_after = await api.post(link, data=CONFIRM, headers=JSON)
    fresh = await api.post(f"/confirm/{await token(pool, person)}", data=CONFIRM, headers=JSON)
    assert (confirm_after.status_code, confirm_after.json()) == (404, {"outcome": "unknown"})
    assert (fresh.status_code, fresh.json()) == (404, {"outcome": "unknown"})
    assert await totals(pool) == before

    # the owner of the address signs for themselves (through the API, which stamps when
    # it received the form): a new pending signature; the forged one, redelivered, is not
    again = submission(
        campaign=REQ, email=person["email"].upper(), received_at=datetime.now(UTC).isoformat()
    )
    await produce(settings, encode([again, person]))
    outcome = await drain(settings)
    assert outcome["inserted"] == 1 and outcome.get("duplicates", 0) == 0
    assert outcome["erased"] == 1
    stored = await row(pool, again)
    assert stored["state"] == "pending" and stored["email_hash"] is not None
    assert await totals(pool) == before


async def test_a_closed_campaign_confirms_nothing(
    settings: Settings, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    [person] = await pending_signatures(settings)
    link = f"/confirm/{await token(pool, person)}"
    await close_campaign(pool, REQ)
    before = await totals(pool)

    page = await api.get(f"{link}?lang=en", headers=BROWSER)
    pressed = await api.post(f"{link}?lang=en", data=CONFIRM, headers=BROWSER)
    script = await api.post(link, data=CONFIRM, headers=JSON)

    assert page.status_code == pressed.status_code == script.status_code == 409
    assert "This petition is closed" in pressed.text
    assert script.json() == {"outcome": "closed"}
    assert (await row(pool, person))["state"] == "pending"
    assert await totals(pool) == before


async def test_a_confirmed_signature_reaches_the_published_totals(
    settings: Settings, pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    people = await pending_signatures(settings, 2)
    link = f"/confirm/{await token(pool, people[0])}"
    stop = asyncio.Event()
    counter = asyncio.create_task(run_worker(WorkerKind.COUNT, settings, stop))
    try:
        pressed = await api.post(link, data=CONFIRM, headers=JSON)
        assert pressed.json() == {"outcome": "confirmed"}
        _, version = await totals(pool)
        async with asyncio.timeout(10):
            while True:
                published = (await read_published_totals(settings, timeout=2)).get(REQ)
                if published is not None and published.version >= version:
                    break
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await counter
    assert (published.total, published.version) == (1, version)
    assert published.by_country == {"IT": 1}


async def test_thanks_and_form_speak_of_the_email_only_where_it_is_required(
    pool: asyncpg.Pool, api: httpx.AsyncClient
) -> None:
    await create_campaign(pool, CAMPAIGN)
    person = {
        "first_name": "Ottavia", "last_name": "Rossi", "country": "IT", "consent": "on",
        "email": f"ottavia.{uuid.uuid4().hex[:8]}@example.org", "language": "en",
    }  # fmt: skip

    async def sign(slug: str, **fields: str) -> httpx.Response:
        url = f"/v1/campaigns/{slug}/signatures"
        return await api.post(url, data={**person, **fields}, headers=BROWSER)

    required = await sign(REQ)
    repeat = await sign(REQ, email=person["email"].upper())
    italian = await sign(REQ, language="it")
    off = await sign(CAMPAIGN.slug)
    form_required = await api.get(f"/campaigns/{REQ}?lang=en")
    form_off = await api.get(f"/campaigns/{CAMPAIGN.slug}?lang=en")

    assert required.status_code == repeat.status_code == off.status_code == 202
    assert "check your inbox" in required.text and "confirm your" in required.text
    assert required.text == repeat.text  # nothing tells a repeat signer apart
    assert "Controlla la tua casella di posta" in italian.text
    assert "inbox" not in off.text and "Your signature for" in off.text
    assert "We will email you a link" in form_required.text
    assert "We will email you a link" not in form_off.text
