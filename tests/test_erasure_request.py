"""A signer asks to be forgotten: the same answer for anyone, an email with a one-time
link only to an address that signed, and only the link's button erases."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from consumers.service import WorkerKind, run_worker
from runtime.campaigns import create_campaign
from runtime.erasure import person_hash
from runtime.mailbox import Mailbox
from runtime.settings import Settings
from runtime.topics import ensure_topics
from tests.conftest import SECRET, make_settings
from tests.helpers import CAMPAIGN, encode, produce, submission
from tests.pipeline import serving_api

pytestmark = pytest.mark.integration

JSON = {"accept": "application/json"}
BROWSER = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[Mailbox]:
    with Mailbox(tmp_path / "mail") as box:
        yield box


@pytest.fixture
async def mail_settings(database_url: str, kafka_bootstrap: str, mailbox: Mailbox) -> Settings:
    s = make_settings(
        database_url,
        kafka_bootstrap,
        mail_group=f"g-{uuid.uuid4().hex[:10]}-mail",
        smtp_host=mailbox.host,
        smtp_port=mailbox.port,
        smtp_tls="off",
        smtp_timeout_s=2.0,
        mail_from="Petizioni <petizioni@example.net>",
        public_url="https://firme.example.net",
        mail_poll_s=0.2,
    )
    await ensure_topics(s, kafka_bootstrap)
    return s


async def drain(settings: Settings, kind: WorkerKind) -> None:
    await asyncio.wait_for(run_worker(kind, settings, asyncio.Event(), drain=True), 90)


def comparable(answer: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k, v) for k, v in answer.headers.items() if k.lower() != "date")
    return answer.status_code, answer.content, headers


async def test_a_request_answers_the_same_and_only_the_link_erases(
    mail_settings: Settings, pool: asyncpg.Pool, mailbox: Mailbox
) -> None:
    await create_campaign(pool, CAMPAIGN)
    signer, stranger = "Sofia.Asks@example.org", "never.signed@example.org"
    await produce(mail_settings, encode([submission(email=signer), submission()]))
    await drain(mail_settings, WorkerKind.PERSIST)
    total_before = await pool.fetchval("SELECT total FROM campaign_totals")

    async with (
        serving_api(mail_settings) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as api,
    ):
        answers = [
            await api.post("/v1/erasure-requests", json={"email": signer, "language": "it"}),
            await api.post("/v1/erasure-requests", json={"email": stranger}),
            await api.post("/v1/erasure-requests", data={"email": signer.upper()}),
        ]
        bad = await api.post("/v1/erasure-requests", json={"email": "not an address"})

        # the same answer, byte for byte, whether the address signed or not
        assert answers[0].status_code == 202
        assert comparable(answers[0]) == comparable(answers[1]) == comparable(answers[2])
        assert answers[0].json() == {"status": "requested"}
        assert (bad.status_code, bad.json()["errors"][0]["field"]) == (422, "email")
        # the repeat within the hour was dropped: one request per person
        assert await pool.fetchval("SELECT count(*) FROM erasure_requests") == 2

        await drain(mail_settings, WorkerKind.MAIL)

        messages = mailbox.messages()
        assert [str(m["To"]) for m in messages] == [signer]  # nobody else gets anything
        text = str(messages[0].get_content())
        assert "cancellare" in text  # in the language asked for
        match = re.search(r"https://firme\.example\.net(/forget/\S+)", text)
        assert match is not None
        link = match[1]
        kept = await pool.fetch("SELECT email, token_hash FROM erasure_requests")
        assert [(r["email"], r["token_hash"] is not None) for r in kept] == [(None, True)]

        # the page behind the link changes nothing; its button erases, once
        page = await api.get(link, headers=BROWSER)
        assert page.status_code == 200 and "Delete my signatures" in page.text
        assert page.headers["cache-control"] == "no-store"
        assert await pool.fetchval("SELECT count(*) FROM signatures") == 2

        pressed = await api.post(link, data={"action": "forget"}, headers=JSON)
        again = await api.post(link, data={"action": "forget"}, headers=JSON)
        garbage = await api.post("/forget/forget.nope", headers=JSON)

    assert (pressed.status_code, pressed.json()) == (200, {"outcome": "forgotten"})
    assert (again.status_code, again.json()) == (200, {"outcome": "already_used"})
    assert (garbage.status_code, garbage.json()) == (404, {"outcome": "unknown"})
    hashed = person_hash(SECRET.encode(), signer)
    assert await pool.fetchval("SELECT count(*) FROM signatures WHERE email_hash = $1", hashed) == 0
    scope = await pool.fetch("SELECT campaign FROM erasures WHERE email_hash = $1", hashed)
    assert [r["campaign"] for r in scope] == [None]  # every campaign
    assert await pool.fetchval("SELECT total FROM campaign_totals") == total_before - 1
