"""Double opt-in end to end, as a person goes through it: sign on the page, receive the
email, open its link, press its button; counted once, however often it is pressed."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from consumers.service import WorkerKind, run_worker
from runtime.campaigns import create_campaign
from runtime.mailbox import Mailbox
from runtime.settings import Settings
from runtime.totals_feed import read_published_totals
from tests.helpers import REQUIRED_CAMPAIGN, wait_until
from tests.invariants import History, Told, check
from tests.pipeline import running_pipeline

pytestmark = pytest.mark.integration

SLUG = REQUIRED_CAMPAIGN.slug
PUBLIC_URL = "https://firme.example.org"
LINK = re.compile(re.escape(PUBLIC_URL) + r"(/confirm/[A-Za-z0-9._-]+)")


async def test_sign_receive_open_press_counted_once(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    email = f"giulia.{uuid.uuid4().hex[:8]}@example.org"
    form = {
        "first_name": "Giulia", "last_name": "Rossi", "email": email, "country": "IT",
        "consent": "on", "language": "it", "submission_id": str(uuid.uuid4()),
    }  # fmt: skip
    history = History()
    with Mailbox(tmp_path / "mail") as mailbox:
        s = settings.model_copy(
            update={
                "smtp_host": "127.0.0.1",
                "smtp_port": mailbox.port,
                "smtp_tls": "off",
                "mail_from": "petizioni@example.org",
                "public_url": PUBLIC_URL,
            }
        )
        stop = asyncio.Event()
        mail = asyncio.create_task(run_worker(WorkerKind.MAIL, s, stop))
        try:
            async with running_pipeline(s) as api, httpx.AsyncClient(base_url=api) as client:
                signed = await client.post(
                    f"/v1/campaigns/{SLUG}/signatures", data=form, headers={"accept": "text/html"}
                )
                assert signed.status_code == 202
                history.record({**form, "campaign": SLUG}, told=Told.ACKNOWLEDGED)

                await wait_until(lambda: asyncio.sleep(0, len(mailbox.paths()) == 1), 60, 0.1)
                [message] = mailbox.messages()
                assert message["To"] == email
                text = message.get_body(preferencelist=("plain",))
                assert text is not None
                found = LINK.search(text.get_content())
                assert found is not None
                link = found[1]

                page = await client.get(link)
                assert page.status_code == 200
                assert 'value="confirm"' in page.text and 'value="remove"' in page.text
                assert email not in page.text and "Giulia" not in page.text
                totals = (await client.get(f"/v1/campaigns/{SLUG}/totals")).json()
                assert totals["total"] == 0  # opened, not confirmed: nothing counts

                pressed = [
                    await client.post(link, data={"action": "confirm"}, headers={"accept": a})
                    for a in ("text/html", "application/json", "application/json")
                ]
                assert [p.status_code for p in pressed] == [200, 200, 200]
                assert [p.json()["outcome"] for p in pressed[1:]] == ["already_confirmed"] * 2

                async def published_once() -> bool:
                    found = (await read_published_totals(s)).get(SLUG)
                    return found is not None and found.total == 1

                await wait_until(published_once, 30, 0.2)
                state = await pool.fetchval(
                    "SELECT state FROM signatures WHERE submission_id = $1::uuid",
                    form["submission_id"],
                )
                assert state == "confirmed"
        finally:
            stop.set()
            await mail

    final = (await read_published_totals(s))[SLUG]
    assert final.total == 1
    assert await check(s, pool, history) == []
