"""Partner keys: only a key's holder signs in a partner's name, and a revoked key stops.

The key decides the source (`partner:NAME`), never the request. The lifecycle runs as an
operator and a partner would: `signatures partner …` commands and a real `signatures api`
process, whose log must never contain the key. The rest runs the API (and, for confirming
partners, the whole pipeline) in the test process against the real services.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from consumers.store import _INSERT, _INSERT_VOUCHED
from ingest.partner_auth import bearer_token, key_in_query
from runtime.broker import free_port
from runtime.campaigns import create_campaign
from runtime.kafka import read_to_end
from runtime.partners import KEY_SHAPE, create_partner, key_hash, new_key, revoke_partner
from runtime.settings import Settings, settings_env
from runtime.topics import ensure_topics
from schemas.campaign import Confirmation, NewCampaign
from tests.conftest import make_settings
from tests.helpers import CAMPAIGN, REQUIRED_CAMPAIGN, wait_until
from tests.pipeline import running_pipeline, serving_api

OTHER = NewCampaign(
    slug="altra-campagna", title="Altra", target="t", goal=10, confirmation=Confirmation.OFF
)
BATCH = f"/v1/campaigns/{CAMPAIGN.slug}/signatures/batch"
SINGLE = f"/v1/campaigns/{CAMPAIGN.slug}/signatures"


@pytest.fixture
async def settings(database_url: str, kafka_bootstrap: str) -> Settings:
    """Trusted load: the rate limits and the silent flags have tests of their own."""
    s = make_settings(database_url, kafka_bootstrap, rate_limits=False, flags=False)
    await ensure_topics(s, kafka_bootstrap)
    return s


def person(**fields: Any) -> dict[str, Any]:
    token = uuid.uuid4().hex[:10]
    return {
        "first_name": "Lidia",
        "last_name": "Poët",
        "email": f"lidia.{token}@example.org",
        "country": "IT",
        "consent": True,
        **fields,
    }


def ndjson(bodies: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(b, ensure_ascii=False) for b in bodies).encode()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "content-type": "application/x-ndjson"}


def key_only(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def refusal(response: httpx.Response) -> tuple[int, str]:
    [error] = response.json()["errors"]
    assert error["field"] == "authorization"
    return response.status_code, str(error["reason"])


async def sources_on_topic(settings: Settings) -> list[str]:
    return [
        json.loads(r.value)["source"]
        for r in await read_to_end(settings, settings.topic_submitted, timeout=30)
    ]


# --- without services ---------------------------------------------------------------------


def test_keys_are_random_prefixed_and_stored_only_as_a_hash() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(KEY_SHAPE.fullmatch(k) for k in keys)
    key = keys.pop()
    assert len(key_hash(key)) == 32 and key.encode() not in key_hash(key)


@pytest.mark.parametrize(
    ("query", "refused"),
    [
        (b"", False),
        (b"lang=it", False),
        (b"partner=acme", False),
        (b"key=abc", True),
        (b"API_KEY=abc", True),
        (b"token=", True),
        (b"access_token=abc", True),
        (b"lang=it&partner=sigpk_" + b"a" * 43, True),
        (b"x=%73igpk_" + b"b" * 43, True),  # the prefix percent-encoded
        (b"x=Bearer%20abc", True),
    ],
)
def test_a_credential_in_the_query_string_is_recognised(query: bytes, refused: bool) -> None:
    assert key_in_query(query) is refused


def test_only_a_bearer_token_is_a_key() -> None:
    assert bearer_token(b"Bearer sigpk_x") == b"sigpk_x"
    assert bearer_token(b"bearer  sigpk_x ") == b"sigpk_x"
    for header in (b"", b"Bearer", b"Bearer ", b"Basic YTpi", b"sigpk_x", b"Bearer a b"):
        assert bearer_token(header) is None


def test_the_vouching_insert_differs_from_the_plain_one_only_by_the_vouch() -> None:
    assert "vouched_by" in _INSERT_VOUCHED and "$2" in _INSERT_VOUCHED
    assert "vouched_by" not in _INSERT and "$2" not in _INSERT


# --- the lifecycle, as an operator and a partner live it ----------------------------------


def signatures(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
async def api_process(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> AsyncIterator[tuple[str, dict[str, str], Path]]:
    """A real `signatures api` process: its URL, its environment and its log file."""
    await create_campaign(pool, CAMPAIGN)
    await create_campaign(pool, OTHER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNATURES_")}
    env.update(settings_env(settings))
    env["SIGNATURES_STATE_DIR"] = str(tmp_path / "state")
    port = free_port()
    log = tmp_path / "api.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "api", "--host", "127.0.0.1", "--port", str(port),
            env=env, stdin=asyncio.subprocess.DEVNULL, stdout=output,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:

            async def up() -> bool:
                try:
                    return (await client.get("/healthz")).status_code == 200
                except httpx.TransportError:
                    assert process.returncode is None, log.read_text()
                    return False

            await wait_until(up, timeout=60, interval=0.1)
        yield url, env, log
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 30)


@pytest.mark.slow
@pytest.mark.integration
async def test_key_lifecycle_create_use_revoke(
    settings: Settings, pool: asyncpg.Pool, api_process: tuple[str, dict[str, str], Path]
) -> None:
    url, env, log = api_process
    created = await asyncio.to_thread(
        signatures, "partner", "create", "--name", "acme", "--campaign", CAMPAIGN.slug, env=env
    )
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert KEY_SHAPE.fullmatch(key), "stdout is the key and nothing else"
    assert key not in created.stderr
    assert await pool.fetchval("SELECT count(*) FROM partners WHERE key_hash = $1", key_hash(key))

    listed = await asyncio.to_thread(signatures, "partner", "list", "--json", env=env)
    table = await asyncio.to_thread(signatures, "partner", "list", env=env)
    assert listed.returncode == table.returncode == 0
    for shown in (listed, table):
        assert key not in shown.stdout + shown.stderr
        assert key[len("sigpk_") : len("sigpk_") + 8] not in shown.stdout
    [row] = json.loads(listed.stdout)
    assert row["name"] == "acme" and row["campaigns"] == [CAMPAIGN.slug]
    assert (row["confirms"], row["last_used_at"], row["revoked_at"]) == (False, None, None)
    assert "acme" in table.stdout

    async with httpx.AsyncClient(base_url=url, timeout=20) as client:
        batch = await client.post(BATCH, content=ndjson([person(), person()]), headers=bearer(key))
        assert batch.status_code == 200, batch.text
        assert batch.json()["accepted"] == 2
        single = await client.post(
            SINGLE, json=person(), headers={"authorization": f"Bearer {key}"}
        )
        assert single.status_code == 202, single.text
        assert (await client.post(SINGLE, json=person())).status_code == 202  # the web form

        for query in ("key", "api_key", "token", "access_token", "partner"):
            for path in (BATCH, SINGLE):
                leaked = await client.post(
                    path, params={query: key}, content=ndjson([person()]), headers=bearer(key)
                )
                assert refusal(leaked) == (400, "key_in_query"), (path, query)

        async def used() -> bool:
            at = await pool.fetchval("SELECT last_used_at FROM partners WHERE name = 'acme'")
            return at is not None

        await wait_until(used, timeout=10, interval=0.1)

        revoked = await asyncio.to_thread(signatures, "partner", "revoke", "acme", env=env)
        assert revoked.returncode == 0, revoked.stderr
        started = time.monotonic()
        accepted = [3]  # signed with the key so far, the refreshes before the revocation too

        async def refused() -> bool:
            answer = await client.post(BATCH, content=ndjson([person()]), headers=bearer(key))
            assert answer.status_code in (200, 401), answer.text
            accepted[0] += answer.status_code == 200
            return answer.status_code == 401

        await wait_until(refused, timeout=10, interval=0.1)
        assert time.monotonic() - started < 5
        gone = await client.post(BATCH, content=ndjson([person()]), headers=bearer(key))
        assert refusal(gone) == (401, "key_invalid")
        assert gone.headers["www-authenticate"].startswith("Bearer")
        single = await client.post(
            SINGLE, json=person(), headers={"authorization": f"Bearer {key}"}
        )
        assert refusal(single) == (401, "key_invalid")  # never taken for the web form

    again = await asyncio.to_thread(signatures, "partner", "revoke", "acme", env=env)
    assert again.returncode == 0 and "already revoked" in again.stdout
    unknown = await asyncio.to_thread(signatures, "partner", "revoke", "nobody", env=env)
    assert unknown.returncode == 1 and unknown.stderr.strip() == "no partner nobody"

    renewed = await asyncio.to_thread(signatures, "partner", "create", "--name", "acme", env=env)
    assert renewed.returncode == 0, renewed.stderr
    assert KEY_SHAPE.fullmatch(renewed.stdout.strip()) and renewed.stdout.strip() != key
    twice = await asyncio.to_thread(signatures, "partner", "create", "--name", "acme", env=env)
    assert twice.returncode == 1 and "revoke it first" in twice.stderr and twice.stdout == ""
    bad = await asyncio.to_thread(signatures, "partner", "create", "--name", "Acme Inc", env=env)
    assert bad.returncode == 2 and bad.stdout == ""
    nowhere = await asyncio.to_thread(
        signatures, "partner", "create", "--name", "x", "--campaign", "nope", env=env
    )
    assert nowhere.returncode == 1 and nowhere.stderr.strip() == "no campaign nope"
    history = json.loads(
        (await asyncio.to_thread(signatures, "partner", "list", "--json", env=env)).stdout
    )
    assert [(r["name"], r["revoked_at"] is None) for r in history] == [
        ("acme", False),
        ("acme", True),
    ]
    assert history[0]["last_used_at"] is not None

    # Only the key's partner signed, and the key is in no line the API logged.
    sources = await sources_on_topic(settings)
    assert sorted(sources) == ["partner:acme"] * accepted[0] + ["web"]
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "request" and line.get("status") == 400 for line in lines)
    assert key not in text and key[6:20] not in text


# --- refusals and sources, on an API in the test process ----------------------------------


@pytest.fixture
async def keys(pool: asyncpg.Pool) -> dict[str, str]:
    await create_campaign(pool, CAMPAIGN)
    await create_campaign(pool, OTHER)
    _, acme = await create_partner(pool, "acme", [CAMPAIGN.slug], confirms=False)
    _, other = await create_partner(pool, "elsewhere", [OTHER.slug], confirms=False)
    _, former = await create_partner(pool, "former", None, confirms=False)
    await revoke_partner(pool, "former")
    return {"acme": acme, "other": other, "former": former, "unknown": new_key()}


@pytest.mark.integration
async def test_each_refusal_of_a_key_and_where_the_source_comes_from(
    settings: Settings, pool: asyncpg.Pool, keys: dict[str, str]
) -> None:
    body = ndjson([person()])
    async with serving_api(settings) as api, httpx.AsyncClient(base_url=api, timeout=20) as client:
        nokey = await client.post(BATCH, content=body)
        assert refusal(nokey) == (401, "key_required")
        assert nokey.headers["www-authenticate"].startswith("Bearer")
        for name in ("unknown", "former"):
            answer = await client.post(BATCH, content=body, headers=bearer(keys[name]))
            assert refusal(answer) == (401, "key_invalid"), name
            assert answer.headers["www-authenticate"].startswith("Bearer")
            single = await client.post(SINGLE, json=person(), headers=key_only(keys[name]))
            assert refusal(single) == (401, "key_invalid"), name
        for header in ("Basic YWNtZTpzZWNyZXQ=", "Bearer", keys["acme"], ""):
            answer = await client.post(BATCH, content=body, headers={"authorization": header})
            assert refusal(answer) == (401, "key_invalid"), header
        scoped = await client.post(BATCH, content=body, headers=bearer(keys["other"]))
        assert refusal(scoped) == (403, "campaign_not_in_scope")
        scoped = await client.post(SINGLE, json=person(), headers=key_only(keys["other"]))
        assert refusal(scoped) == (403, "campaign_not_in_scope")

        # ?partner= decides nothing: the source is the key's partner.
        named = await client.post(
            BATCH, params={"partner": "elsewhere"}, content=ndjson([person(), person()]),
            headers=bearer(keys["acme"]),
        )  # fmt: skip
        assert named.status_code == 200 and named.json()["accepted"] == 2
        as_partner = await client.post(SINGLE, json=person(), headers=key_only(keys["acme"]))
        as_web = await client.post(SINGLE, json=person(), params={"partner": "acme"})
        assert (as_partner.status_code, as_web.status_code) == (202, 202)
        form = await client.post(
            SINGLE, data={**person(), "consent": "on"},
            headers={"authorization": f"Bearer {keys['acme']}"},
        )  # fmt: skip
        assert form.status_code == 202

        # last_used_at: written on first use, not again within the minute
        first = await pool.fetchval("SELECT last_used_at FROM partners WHERE name = 'acme'")
        assert first is not None
        await client.post(SINGLE, json=person(), headers=key_only(keys["acme"]))
        await asyncio.sleep(0.2)
        assert await pool.fetchval("SELECT last_used_at FROM partners WHERE name = 'acme'") == first

    assert sorted(await sources_on_topic(settings)) == ["partner:acme"] * 5 + ["web"]


# --- confirming partners through the whole pipeline ---------------------------------------


@pytest.mark.slow
@pytest.mark.integration
async def test_a_confirming_partner_counts_at_once_a_plain_one_waits(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    await create_campaign(pool, CAMPAIGN)
    _, vouching = await create_partner(pool, "vouching", None, confirms=True)
    _, plain = await create_partner(pool, "plain", None, confirms=False)
    required = f"/v1/campaigns/{REQUIRED_CAMPAIGN.slug}/signatures/batch"
    vouched_batch = ndjson([person(submission_id=str(uuid.uuid4())) for _ in range(3)])
    plain_batch = ndjson([person(submission_id=str(uuid.uuid4())) for _ in range(2)])

    async with running_pipeline(settings) as api, httpx.AsyncClient(base_url=api) as client:
        for _ in range(2):  # the same batches again: nothing is stored twice
            for body, key in ((vouched_batch, vouching), (plain_batch, plain)):
                answer = await client.post(required, content=body, headers=bearer(key))
                assert answer.status_code == 200 and answer.json()["rejected"] == 0, answer.text
        raw = await client.post(BATCH, content=ndjson([person()]), headers=bearer(vouching))
        assert raw.status_code == 200

        async def stored() -> bool:
            return bool(await pool.fetchval("SELECT count(*) FROM signatures") == 6)

        await wait_until(stored, timeout=60, interval=0.1)

        async def published() -> bool:
            totals = await client.get(f"/v1/campaigns/{REQUIRED_CAMPAIGN.slug}/totals")
            return bool(totals.json()["total"] == 3)

        await wait_until(published, timeout=30, interval=0.1)
        await asyncio.sleep(0.5)  # anything redelivered or repeated would show by now

    rows = await pool.fetch(
        "SELECT campaign, source, state, vouched_by, count(*) AS n FROM signatures "
        "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2"
    )
    assert [tuple(row) for row in rows] == [
        (CAMPAIGN.slug, "partner:vouching", "confirmed", None, 1),  # no confirmation asked
        (REQUIRED_CAMPAIGN.slug, "partner:plain", "pending", None, 2),
        (REQUIRED_CAMPAIGN.slug, "partner:vouching", "confirmed", "vouching", 3),
    ]
    totals = await pool.fetchrow(
        "SELECT total, pending, duplicates FROM campaign_totals WHERE campaign = $1",
        REQUIRED_CAMPAIGN.slug,
    )
    assert totals is not None and tuple(totals) == (3, 2, 0)
    assert await pool.fetchval("SELECT count(*) FROM duplicate_submissions") == 0
