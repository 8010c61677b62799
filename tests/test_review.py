"""`signatures review`: list what the flags hold, then accept or invalidate, dry run first.

Against a running pipeline (API, persist worker, counter) with the flags on: the dry run
shows how many signatures it would touch and changes nothing; the real run changes the
rows and the public total with exactly one new version, which the running counter
publishes. Invalidating takes a counted signature out, and an invalidated signature stays
out whatever is replayed or confirmed afterwards; `reconcile` and the invariant checker
agree with the totals throughout.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from ops.reconcile import reconcile
from runtime.campaigns import create_campaign
from runtime.kafka import read_to_end
from runtime.settings import Settings, settings_env
from runtime.signature_states import change_state
from schemas.campaign import SignatureState
from tests.helpers import CAMPAIGN, REQUIRED_CAMPAIGN, encode, produce, submission, wait_until
from tests.invariants import Outcomes, _stored_totals_problems
from tests.pipeline import running_pipeline

pytestmark = pytest.mark.integration

SLUG, REQ = CAMPAIGN.slug, REQUIRED_CAMPAIGN.slug


def signed(campaign: str = SLUG, domain: str | None = None, **fields: Any) -> dict[str, Any]:
    token = uuid.uuid4().hex[:10]
    email = f"r.{token}@{domain or f'd{token}.example.org'}"
    return submission(campaign=campaign, email=email, **fields)


HONEYPOT = {"edge_flag": "honeypot", "client_prefix": "203.0.113.0/24", "client_hash": "a" * 32}


@dataclass
class Ran:
    exit_code: int
    output: str  # stdout: what the operator reads (logs go to stderr)


async def cli(settings: Settings, *args: str) -> Ran:
    """`signatures …` as an operator runs it: its own process, the same configuration."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args,
        env={**os.environ, **settings_env(settings), "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Ran(process.returncode, stdout.decode())


@pytest.mark.slow
async def test_review_list_accept_and_invalidate_with_dry_runs_first(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    settings = settings.model_copy(update={"flags": True})
    await create_campaign(pool, CAMPAIGN)
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    spam_domain = f"spam-{uuid.uuid4().hex[:8]}.org"
    counted = [signed() for _ in range(3)]
    invalid_later = signed(domain=spam_domain)
    honeypots = [signed(**HONEYPOT) for _ in range(4)]
    throwaways = [signed(domain="mailinator.com") for _ in range(2)]
    held_pending = signed(REQ, **HONEYPOT)
    pending_spam = signed(REQ, domain=spam_domain)
    everything = [*counted, invalid_later, *honeypots, *throwaways, held_pending, pending_spam]

    async with (
        running_pipeline(settings) as api,
        httpx.AsyncClient(base_url=api, timeout=30) as client,
    ):

        async def public() -> tuple[int, int]:
            answer = (await client.get(f"/v1/campaigns/{SLUG}/totals")).json()
            return answer["total"], answer["version"]

        async def published(total: int, version: int | None = None) -> bool:
            now = await public()
            return now[0] == total and (version is None or now[1] == version)

        async def stored(n: int) -> bool:
            return bool(await pool.fetchval("SELECT count(*) FROM signatures") == n)

        await produce(settings, encode(everything))
        await wait_until(lambda: stored(len(everything)), timeout=60, interval=0.2)
        await wait_until(lambda: published(4), timeout=30, interval=0.2)
        total, version = await public()

        # what the flags hold, by reason, prefix and domain; never an email
        listed = await cli(settings, "review", "list", "--campaign", SLUG, "--json")
        assert listed.exit_code == 0, listed.output
        [held] = json.loads(listed.output)["campaigns"]
        assert held["held"] == 6
        assert held["held_confirmed"] == 6  # confirmation off: all would count at once
        assert held["by_reason"] == {"honeypot": 4, "disposable_domain": 2}
        assert held["by_prefix"] == {"203.0.113.0/24": 4, "(none)": 2}
        assert held["by_domain"]["mailinator.com"] == 2
        shown = await cli(settings, "review", "list")
        assert shown.exit_code == 0, shown.output
        for output in (listed.output, shown.output):
            assert "@" not in output
        assert "honeypot" in shown.output
        assert REQ in shown.output

        # accept the honeypot ones: a dry run first, that changes nothing
        accept_honeypots = ["review", "accept", "--campaign", SLUG, "--reason", "honeypot"]
        dry = await cli(settings, *accept_honeypots, "--dry-run", "--json")
        assert dry.exit_code == 0, dry.output
        preview = json.loads(dry.output)
        assert (preview["touched"], preview["counted_change"]) == (4, 4)
        assert (preview["total_before"], preview["total_after"]) == (4, 8)
        assert await pool.fetchval("SELECT count(*) FROM signatures WHERE review IS NOT NULL") == 0
        await asyncio.sleep(settings.totals_poll_s * 3)
        assert await public() == (total, version)

        accepted = await cli(settings, *accept_honeypots)
        assert accepted.exit_code == 0, accepted.output
        assert "accepted 4 signatures" in accepted.output
        assert f"from 4 to 8 (version {version + 1})" in accepted.output
        await wait_until(lambda: published(8, version + 1), timeout=30, interval=0.2)

        # invalidate a signature that counts, by its domain: dry run, then for real
        refused = await cli(settings, "review", "invalidate", "--campaign", SLUG)
        assert refused.exit_code == 2  # no filter: never the whole campaign
        invalidate_spam = ["review", "invalidate", "--campaign", SLUG, "--domain", spam_domain]
        dry = await cli(settings, *invalidate_spam, "--dry-run")
        assert dry.exit_code == 0, dry.output
        assert "would invalidate 1 signatures" in dry.output
        assert "would go from 8 to 7" in dry.output
        assert "nothing changed" in dry.output
        await asyncio.sleep(settings.totals_poll_s * 3)
        assert await public() == (8, version + 1)
        invalidated = await cli(settings, *invalidate_spam, "--json")
        assert invalidated.exit_code == 0, invalidated.output
        assert json.loads(invalidated.output)["touched"] == 1
        await wait_until(lambda: published(7, version + 2), timeout=30, interval=0.2)

        # on the campaign that requires confirmation: accept the held one, invalidate the
        # other while both are pending; then their owners confirm
        for args in (["accept", "--reason", "honeypot"], ["invalidate", "--domain", spam_domain]):
            done = await cli(settings, "review", *args, "--campaign", REQ, "--json")
            assert done.exit_code == 0, done.output
            outcome = json.loads(done.output)
            assert (outcome["touched"], outcome["counted_change"]) == (1, 0)
        async with pool.acquire() as conn, conn.transaction():
            await change_state(
                conn,
                [
                    uuid.UUID(held_pending["submission_id"]),
                    uuid.UUID(pending_spam["submission_id"]),
                ],
                SignatureState.CONFIRMED,
                allowed_from={SignatureState.PENDING},
            )

        # an invalidated signature stays out whatever is replayed, accepted or counted again
        again = await cli(settings, "review", "accept", "--campaign", SLUG, "--domain", spam_domain)
        assert "accepted 0 signatures" in again.output
        await produce(settings, encode([invalid_later, honeypots[0], pending_spam]))

        async def redelivered() -> bool:  # a redelivery is announced again, changing nothing
            events = await read_to_end(settings, settings.topic_accepted)
            return len(events) == len(everything) + 3

        await wait_until(redelivered, timeout=30, interval=0.2)
        await asyncio.sleep(settings.totals_poll_s * 5)
        assert await public() == (7, version + 2)

    totals = {
        r["campaign"]: r["total"]
        for r in await pool.fetch("SELECT campaign, total FROM campaign_totals")
    }
    assert totals == {SLUG: 7, REQ: 1}
    corrections = await reconcile(settings, pool, dry_run=True)
    assert [c.campaign for c in corrections if c.changed] == []
    problems, counts = await _stored_totals_problems(pool, await Outcomes.read(settings, pool))
    assert problems == []
    assert counts == {SLUG: 7, REQ: 1}
