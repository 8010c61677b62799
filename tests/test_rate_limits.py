"""Rate limits on the signing endpoints, against the real API (and the real Redis).

Per client address (X-Forwarded-For believed only from a trusted proxy, right to left),
per partner key and per campaign: past a limit, 429 with `Retry-After` and the usual
error body. The hostile sequences are in tests/corpus/abuse.jsonl; here too the HTML
answer to a browser, limits shared by two API processes through Redis, a limiter whose
storage is down (requests go through), and the cost of a hit with many clients known.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from prometheus_client import REGISTRY

from ingest.rate_limits import _SWEEP_EVERY_S, SweptMemoryStorage
from runtime.campaigns import create_campaign
from runtime.settings import Settings
from tests.helpers import CAMPAIGN
from tests.pipeline import serving_api

SLUG = CAMPAIGN.slug
SIGN = f"/v1/campaigns/{SLUG}/signatures"
CORPUS = [
    json.loads(line)
    for line in (Path(__file__).parent / "corpus" / "abuse.jsonl").read_text().splitlines()
]
# Limits per hour, not per minute: the sliding window counter weighs the previous window
# by the share of it still in view, so a sequence that straddles a window's end would be
# let through a fraction early (2 hits just before the minute weigh 1.98 just after it).
GENEROUS = {
    "rate_limits": True,
    "rate_limit_client": "1000/hour",
    "rate_limit_key": "1000/hour",
    "rate_limit_campaign": "1000/second",
}


def body() -> dict[str, Any]:
    token = uuid.uuid4().hex[:10]
    return {
        "first_name": "Ilse",
        "last_name": "Berg",
        "email": f"ilse.{token}@d{token}.example.org",
        "country": "NL",
        "consent": True,
    }


async def send(client: httpx.AsyncClient, request: dict[str, Any]) -> httpx.Response:
    headers = {}
    if "xff" in request:
        headers["x-forwarded-for"] = request["xff"]
    if "key" in request:
        headers["authorization"] = f"Bearer {request['key']}"
    if request.get("route") == "batch":
        lines = "\n".join(json.dumps(body()) for _ in range(request.get("lines", 1)))
        headers["content-type"] = "application/x-ndjson"
        return await client.post(f"{SIGN}/batch", content=lines.encode(), headers=headers)
    return await client.post(SIGN, json=body(), headers=headers)


def assert_refused(response: httpx.Response, expect: str) -> None:
    _, field_reason = expect.split(" ", 1)
    field, reason = field_reason.split(": ")
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"errors": [{"field": field, "reason": reason}]}
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 3600


@pytest.fixture
async def campaign(pool: asyncpg.Pool) -> str:
    await create_campaign(pool, CAMPAIGN)
    return SLUG


@pytest.mark.integration
@pytest.mark.parametrize("entry", CORPUS, ids=[e["name"] for e in CORPUS])
async def test_abuse_corpus(settings: Settings, campaign: str, entry: dict[str, Any]) -> None:
    tuned = settings.model_copy(
        update={**GENEROUS, "trusted_proxies": entry.get("trusted_proxies", ""), **entry["limits"]}
    )
    async with serving_api(tuned) as api, httpx.AsyncClient(base_url=api, timeout=30) as client:
        for number, (request, expect) in enumerate(
            zip(entry["requests"], entry["expect"], strict=True), start=1
        ):
            response = await send(client, request)
            where = f"request {number}: {response.status_code} {response.text[:200]}"
            if expect == "*":
                assert response.status_code != 429, where
            elif expect.startswith("429"):
                assert_refused(response, expect)
            else:
                assert response.status_code == int(expect), where


@pytest.mark.integration
async def test_a_browser_past_the_limit_gets_the_form_again_with_a_message(
    settings: Settings, campaign: str
) -> None:
    tuned = settings.model_copy(update={**GENEROUS, "rate_limit_client": "1/hour"})
    async with serving_api(tuned) as api, httpx.AsyncClient(base_url=api, timeout=30) as client:
        form = {**body(), "consent": "on"}
        html = {"accept": "text/html"}
        assert (await client.post(SIGN, data=form, headers=html)).status_code == 202
        refused = await client.post(SIGN, data=form, headers=html)
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("text/html")
    assert 1 <= int(refused.headers["retry-after"]) <= 3600
    assert "Too many signatures sent from this connection" in refused.text
    assert 'value="Ilse"' in refused.text  # what they typed is kept


@pytest.mark.integration
async def test_after_retry_after_the_client_may_sign_again(
    settings: Settings, campaign: str
) -> None:
    tuned = settings.model_copy(update={**GENEROUS, "rate_limit_client": "2/2seconds"})
    async with serving_api(tuned) as api, httpx.AsyncClient(base_url=api, timeout=30) as client:
        assert [(await send(client, {})).status_code for _ in range(2)] == [202, 202]
        refused = await send(client, {})
        assert refused.status_code == 429
        await asyncio.sleep(int(refused.headers["retry-after"]) + 0.1)
        assert (await send(client, {})).status_code == 202


def _redis_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.integration
async def test_two_api_processes_share_the_limits_through_redis(
    settings: Settings, campaign: str
) -> None:
    # Redis runs on every machine of this kind; without it this fails rather than skips
    assert _redis_reachable(), "this test needs Redis on 127.0.0.1:6379"
    tuned = settings.model_copy(
        update={
            **GENEROUS,
            "rate_limit_client": "3/hour",
            "rate_limit_storage": "redis://127.0.0.1:6379",
            "trusted_proxies": "127.0.0.1",
        }
    )
    client_address = f"198.51.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"
    request = {"xff": client_address}
    async with (
        serving_api(tuned) as first,
        serving_api(tuned) as second,
        httpx.AsyncClient(base_url=first, timeout=30) as a,
        httpx.AsyncClient(base_url=second, timeout=30) as b,
    ):
        statuses = [(await send(c, request)).status_code for c in (a, a, b)]
        assert statuses == [202, 202, 202]
        assert_refused(await send(b, request), "429 (client): rate_limited")
        assert_refused(await send(a, request), "429 (client): rate_limited")


@pytest.mark.integration
async def test_a_limiter_that_cannot_count_lets_people_sign(
    settings: Settings, campaign: str
) -> None:
    def errors() -> float:
        value = REGISTRY.get_sample_value("signatures_rate_limiter_errors_total")
        return value or 0.0

    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    tuned = settings.model_copy(
        update={
            **GENEROUS,
            "rate_limit_client": "1/minute",
            "rate_limit_storage": f"redis://127.0.0.1:{port}",
        }
    )
    before = errors()
    async with serving_api(tuned) as api, httpx.AsyncClient(base_url=api, timeout=30) as client:
        assert [(await send(client, {})).status_code for _ in range(3)] == [202, 202, 202]
    assert errors() - before == 3


async def test_the_sweep_over_every_known_client_runs_at_most_once_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """limits sweeps every key it holds after each hit; with 20,000 client addresses known
    that made a hit cost about 700 µs. Counted, not timed (a timing would depend on the
    machine's load): the library's sweep may start at most once per second of the run."""
    sweep = "_MemoryStorage__schedule_expiry"  # the library's private name
    assert hasattr(MemoryStorage, sweep)  # what SweptMemoryStorage spaces out must still exist
    library_sweep = getattr(MemoryStorage, sweep)
    sweeps = 0

    async def counted(self: MemoryStorage) -> None:
        nonlocal sweeps
        sweeps += 1
        await library_sweep(self)

    monkeypatch.setattr(MemoryStorage, sweep, counted)
    limiter = SlidingWindowCounterRateLimiter(SweptMemoryStorage())
    item = parse("20/minute")
    started = time.monotonic()
    for n in range(22_000):
        await limiter.hit(item, "client", f"subject-{n % 20_000}")
        await asyncio.sleep(0)  # as between requests: the sweep task may run
    seconds = time.monotonic() - started
    assert 1 <= sweeps <= 1 + math.ceil(seconds / _SWEEP_EVERY_S)


@pytest.mark.integration
async def test_forget_requests_count_against_the_client_limit(
    settings: Settings, campaign: str
) -> None:
    # each forget request may send an email: one address may not send them by the thousand
    tuned = settings.model_copy(update={**GENEROUS, "rate_limit_client": "2/hour"})
    async with serving_api(tuned) as api, httpx.AsyncClient(base_url=api, timeout=30) as client:
        answers = [
            await client.post("/v1/erasure-requests", json={"email": f"p{n}@example.org"})
            for n in range(3)
        ]
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert_refused(answers[2], "429 (client): rate_limited")
