"""The API's edge holds against abuse: slow clients, stream floods, odd headers, made-up
slugs, foreign hosts; and it tells nothing it should not (docs, metrics, caches).

The hostile requests that fit one line each live in `tests/corpus/http_edge.jsonl`;
what needs many sockets, a stopwatch or a process of its own is written out here. Every
test runs the real API on loopback against the real PostgreSQL and broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.edge import MAX_UNKNOWN_NAMED, EdgeRejection, from_json_object
from ingest.live import Frame, TotalsHub, last_event_id
from runtime.broker import free_port
from runtime.campaigns import create_campaign
from runtime.db import BoundedPool
from runtime.settings import ConfigError, Settings, load_settings, settings_env
from runtime.topics import ensure_topics
from schemas.events import CampaignTotals
from tests.conftest import make_settings
from tests.helpers import CAMPAIGN, sse_events
from tests.pipeline import serving_api

CORPUS = Path(__file__).resolve().parent / "corpus" / "http_edge.jsonl"
SIGN = f"/v1/campaigns/{CAMPAIGN.slug}/signatures"
STREAM = f"/v1/campaigns/{CAMPAIGN.slug}/totals/stream"
BROWSER = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
_REPEAT = re.compile(r"\$repeat\((.*?)\*(\d+)\)")


def person(**fields: Any) -> dict[str, Any]:
    values = {
        "first_name": "Ottavia",
        "last_name": "Quarantotto",
        "email": f"edge.{uuid.uuid4().hex[:10]}@example.org",
        "country": "IT",
        "consent": True,
    }
    return {**values, **fields}


def form(**fields: str) -> dict[str, str]:
    values = {
        "first_name": "Ottavia", "last_name": "Quarantotto", "country": "IT", "consent": "on",
        "email": f"edge.{uuid.uuid4().hex[:10]}@example.org",
    }  # fmt: skip
    return {**values, **fields}


# --- pure logic ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seen"),
    [
        ("42", 42),
        ("0", 0),
        ("9" * 18, int("9" * 18)),
        ("9" * 19, None),  # past 64 bits
        ("9" * 5000, None),
        ("-1", None),
        ("+1", None),
        ("0x1f", None),
        ("1e3", None),
        ("1_000", None),
        (" 7", None),
        ("\u0663\u0663", None),  # Arabic-Indic digits: str.isdigit() says yes
        ("\uff19", None),  # full-width nine
        ("", None),
    ],
)
def test_last_event_id_is_a_plain_decimal_or_nothing(header: str, seen: int | None) -> None:
    assert last_event_id(header) == seen


@given(st.text())
def test_last_event_id_never_raises(header: str) -> None:
    seen = last_event_id(header)
    assert seen is None or 0 <= seen < 10**18


def test_a_version_is_serialised_once_for_every_client(settings_only: Settings) -> None:
    hub = TotalsHub(settings_only)
    totals = CampaignTotals.model_validate(
        {"campaign": CAMPAIGN.slug, "total": 3, "goal": 10, "status": "open", "version": 7,
         "by_country": {"IT": 3}, "updated_at": "2026-12-01T10:00:00Z"}
    )  # fmt: skip
    with hub.subscribe(CAMPAIGN.slug) as first, hub.subscribe(CAMPAIGN.slug) as second:
        hub.publish(totals.model_dump_json().encode())
        one, other = first.queue.get_nowait(), second.queue.get_nowait()
    assert one is other is hub.latest_frame(CAMPAIGN.slug)  # the very same bytes object
    assert one.event == Frame.of(totals).event
    assert one.event.startswith(b"id: 7\r\nevent: totals\r\ndata: {")


def test_422_names_a_few_unknown_fields_at_most() -> None:
    body = {**person(), **{f"field_{chr(97 + n)}": n for n in range(26)}}
    rejected = from_json_object(body, campaign="c", source="web")
    assert isinstance(rejected, EdgeRejection)
    errors = rejected.as_json()["errors"]
    assert len(errors) == MAX_UNKNOWN_NAMED + 1
    assert errors[-1] == {"field": "(more)", "reason": "unknown_field"}


def test_edge_settings_are_checked_and_name_their_variable() -> None:
    for name, value in [
        ("allowed_hosts", "evil example"),
        ("allowed_hosts", ""),
        ("sse_max_streams", 0),
        ("http_max_connections", 1),
        ("http_header_timeout_s", 0),
        ("http_body_timeout_s", -1),
        ("max_signature_bytes", 10),
        ("max_batch_bytes", 10),
        ("db_acquire_timeout_s", 0),
    ]:
        with pytest.raises(ConfigError, match=f"^SIGNATURES_{name.upper()}: "):
            load_settings(**{name: value})
    assert load_settings(docs="on").docs and not load_settings(docs="off").docs


def test_trusted_hosts_default_to_the_public_url_and_this_machine() -> None:
    assert load_settings().trusted_hosts() == ["localhost", "127.0.0.1"]
    public = load_settings(public_url="https://Firme.Example.org/")
    assert public.trusted_hosts() == ["firme.example.org", "localhost", "127.0.0.1"]
    chosen = load_settings(allowed_hosts="firme.example.org, *.example.net")
    assert chosen.trusted_hosts() == ["firme.example.org", "*.example.net"]


@pytest.fixture
def settings_only() -> Settings:
    return load_settings()


# --- the API in this process -----------------------------------------------------------------


async def edge_settings(database_url: str, bootstrap: str, **overrides: object) -> Settings:
    settings = make_settings(database_url, bootstrap, **overrides)
    await ensure_topics(settings, bootstrap)
    return settings


@contextlib.asynccontextmanager
async def api_with(
    database_url: str, bootstrap: str, pool: asyncpg.Pool, **overrides: object
) -> AsyncIterator[str]:
    await create_campaign(pool, CAMPAIGN)
    async with serving_api(await edge_settings(database_url, bootstrap, **overrides)) as url:
        yield url


@dataclass
class EdgeEntry:
    name: str
    method: str
    path: str
    headers: dict[bytes, bytes]
    body: bytes
    expect: str


def _expand(text: str) -> str:
    return _REPEAT.sub(lambda m: m[1] * int(m[2]), text).replace("$slug", CAMPAIGN.slug)


def edge_corpus() -> list[EdgeEntry]:
    entries = []
    for line in CORPUS.read_text().splitlines():
        spec = json.loads(line)
        entries.append(
            EdgeEntry(
                name=spec["name"],
                method=spec.get("method", "GET"),
                path=_expand(spec["path"]),
                # header values as raw bytes, Unicode as UTF-8: what a hostile client sends
                headers={
                    k.encode(): _expand(v).encode() for k, v in spec.get("headers", {}).items()
                },
                body=_expand(spec.get("body", "")).encode(),
                expect=spec["expect"],
            )
        )
    return entries


def foreign_location(response: httpx.Response, allowed: list[str]) -> str | None:
    location = response.headers.get("location")
    host = urlsplit(location).hostname if location else None
    return location if host is not None and host not in allowed else None


@pytest.mark.integration
async def test_edge_corpus_against_the_api(
    database_url: str, kafka_bootstrap: str, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    wrong: list[str] = []
    async with (
        api_with(database_url, kafka_bootstrap, pool) as api,
        httpx.AsyncClient(base_url=api, timeout=30) as client,
    ):
        current = (await client.get(f"/v1/campaigns/{CAMPAIGN.slug}/totals")).json()
        for entry in edge_corpus():
            request = client.build_request(
                entry.method, entry.path, headers=entry.headers, content=entry.body
            )
            response = await client.send(request, stream=True)
            try:
                status, _, check = entry.expect.partition(" ")
                if response.status_code != int(status):
                    wrong.append(f"{entry.name}: {response.status_code}")
                elif check == "stream":  # garbage ignored: the current totals at once
                    async with asyncio.timeout(10):
                        first = await anext(sse_events(response))
                    if first["version"] != current["version"]:
                        wrong.append(f"{entry.name}: first event {first}")
                if (where := foreign_location(response, ["127.0.0.1", "localhost"])) is not None:
                    wrong.append(f"{entry.name}: redirected to {where}")
            finally:
                await response.aclose()
    assert wrong == []
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert failures == [], [r.getMessage() for r in failures]


@pytest.mark.integration
async def test_stream_places_are_capped_and_given_back(
    database_url: str, kafka_bootstrap: str, pool: asyncpg.Pool
) -> None:
    async with (
        api_with(database_url, kafka_bootstrap, pool, sse_max_streams=2) as api,
        httpx.AsyncClient(base_url=api, timeout=30) as client,
    ):
        async with client.stream("GET", STREAM) as one, client.stream("GET", STREAM) as two:
            for response in (one, two):
                assert response.status_code == 200
                await anext(sse_events(response))
            third = await client.get(STREAM)
            assert third.status_code == 503
            assert third.headers["retry-after"] == "5"
            assert third.json() == {
                "errors": [{"field": "(service)", "reason": "too_many_streams"}]
            }
            assert (await client.get(f"/v1/campaigns/{CAMPAIGN.slug}/totals")).status_code == 200
        async with asyncio.timeout(10):  # the two places come back once their streams end
            while True:
                async with client.stream("GET", STREAM) as again:
                    if again.status_code == 200:
                        await anext(sse_events(again))
                        break
                await asyncio.sleep(0.1)


@pytest.mark.integration
async def test_redirects_never_leave_the_allowed_hosts(
    database_url: str, kafka_bootstrap: str, pool: asyncpg.Pool
) -> None:
    async with api_with(
        database_url, kafka_bootstrap, pool, public_url="https://firme.example.org"
    ) as api:
        port = int(api.rsplit(":", 1)[1])
        async with httpx.AsyncClient(base_url=api) as client:
            evil = await client.get(
                f"/campaigns/{CAMPAIGN.slug}/", headers={"host": "evil.example"}
            )
            assert evil.status_code == 400 and "location" not in evil.headers
            public = await client.get(
                f"/campaigns/{CAMPAIGN.slug}/", headers={"host": "firme.example.org"}
            )
            assert public.status_code == 307
            assert public.headers["location"].startswith("http://firme.example.org/campaigns/")
            local = await client.get(f"/campaigns/{CAMPAIGN.slug}/")
            assert urlsplit(local.headers["location"]).hostname == "127.0.0.1"
        # an absolute URI in the request line names the host no better than the header
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET http://evil.example/campaigns/{CAMPAIGN.slug}/ HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert b"evil.example" not in answer
        # no Host at all (HTTP/1.0): refused too
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /campaigns/{CAMPAIGN.slug}/ HTTP/1.0\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400")


@pytest.mark.integration
async def test_docs_are_off_by_default_and_local_when_on(
    database_url: str, kafka_bootstrap: str, pool: asyncpg.Pool
) -> None:
    async with (
        api_with(database_url, kafka_bootstrap, pool, docs=True) as api,
        httpx.AsyncClient(base_url=api) as client,
    ):
        docs = await client.get("/docs")
        schema = await client.get("/openapi.json")
        linked = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
        fetched = [await client.get(url) for url in linked]
    assert docs.status_code == 200
    assert not re.search(r"(https?:)?//", docs.text), "a third-party URL in the docs page"
    assert linked and all(url.startswith("/") for url in linked)
    assert all(r.status_code == 200 for r in fetched), [str(r.url) for r in fetched]
    csp = docs.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "<script>" not in docs.text
    assert docs.headers["x-frame-options"] == "DENY"
    assert "/v1/campaigns/{slug}/signatures" in schema.json()["paths"]
    # off (the default): see the edge corpus (/docs, /openapi.json and the assets are 404)


@pytest.mark.integration
async def test_pages_that_echo_a_signer_are_never_stored_and_send_security_headers(
    database_url: str, kafka_bootstrap: str, pool: asyncpg.Pool
) -> None:
    async with (
        api_with(
            database_url, kafka_bootstrap, pool, public_url="https://firme.example.org"
        ) as api,
        httpx.AsyncClient(base_url=api, timeout=30) as client,
    ):
        thanks = await client.post(SIGN, data=form(first_name="Nome<Segreto>"), headers=BROWSER)
        again = await client.post(SIGN, data=form(email="non-una-email"), headers=BROWSER)
        as_json = await client.post(SIGN, json=person())
        refused = await client.post(SIGN, json=person(country="XX"))
        page = await client.get(f"/campaigns/{CAMPAIGN.slug}")
        widget = await client.get(f"/campaigns/{CAMPAIGN.slug}/widget")
        missing = await client.get("/campaigns/nessuna")
        confirm = await client.get(f"/confirm/{CAMPAIGN.slug}.{'A' * 43}")
    assert thanks.status_code == 202 and "Nome&lt;Segreto&gt;" in thanks.text
    assert again.status_code == 422 and 'value="non-una-email"' in again.text
    for echoing in (thanks, again, as_json, refused, confirm):
        assert echoing.headers["cache-control"] == "no-store", echoing.url
    for html in (thanks, again, page, widget, missing, confirm):
        assert html.headers["content-type"].startswith("text/html")
        assert html.headers["x-content-type-options"] == "nosniff"
        assert html.headers["referrer-policy"] == "no-referrer"
        assert "camera=()" in html.headers["permissions-policy"]
        assert html.headers["cross-origin-opener-policy"] == "same-origin"
        assert "content-security-policy" in html.headers
        assert html.headers["strict-transport-security"].startswith("max-age=")
    for unframed in (thanks, again, page, missing, confirm):
        assert unframed.headers["x-frame-options"] == "DENY"
    assert "x-frame-options" not in widget.headers  # made to be framed anywhere


@pytest.mark.integration
async def test_no_hsts_when_the_site_is_plain_http(
    database_url: str, kafka_bootstrap: str, pool: asyncpg.Pool
) -> None:
    async with (
        api_with(database_url, kafka_bootstrap, pool) as api,
        httpx.AsyncClient(base_url=api) as client,
    ):
        page = await client.get(f"/campaigns/{CAMPAIGN.slug}")
    assert "strict-transport-security" not in page.headers


@pytest.mark.integration
async def test_body_limits_fit_a_signature_and_refuse_more_before_reading_it(
    database_url: str, kafka_bootstrap: str, pool: asyncpg.Pool
) -> None:
    # The largest signature the rules allow, every character written as a JSON escape of
    # a 4-byte character: it fits the default limit with room to spare.
    largest = json.dumps(
        {
            "first_name": "\U0001d538" * 100,  # written \\ud835\\udd38: 12 bytes each
            "last_name": "\U0001d538" * 100,
            "email": f"{'e' * 64}@{'d' * 63}.{'x' * 63}.example.org",
            "country": "IT",
            "postcode": "9" * 16,
            "consent": True,
            "language": "it-IT-x-abcdefgh",
            "submission_id": str(uuid.uuid4()),
            "submitted_at": datetime.now(UTC).isoformat(),
        },
        indent=2,
    )
    settings = load_settings()
    assert len(largest) < settings.max_signature_bytes // 2
    # A batch's limit fits its most lines at a generous size each.
    assert settings.max_batch_bytes >= 10_000 * 700
    async with (
        api_with(database_url, kafka_bootstrap, pool) as api,
        httpx.AsyncClient(base_url=api, timeout=30) as client,
    ):
        fits = await client.post(
            SIGN, content=largest, headers={"content-type": "application/json"}
        )
        too_big = await client.post(
            SIGN,
            content=b" " * (settings.max_signature_bytes + 1),
            headers={"content-type": "application/json"},
        )

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):  # no length declared: refused once past the limit
                yield b" " * 1024

        chunked = await client.post(
            SIGN, content=chunks(), headers={"content-type": "application/json"}
        )
    assert fits.status_code == 202, fits.text
    assert too_big.status_code == 413 and chunked.status_code == 413
    assert too_big.json() == {"errors": [{"field": "(body)", "reason": "body_too_large"}]}


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, float]:
    """What the server sent before closing, and when it closed."""
    received = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(4096):
            received += chunk
    return received, time.monotonic()


@pytest.mark.integration
async def test_slow_and_idle_connections_are_closed(
    database_url: str, kafka_bootstrap: str, pool: asyncpg.Pool
) -> None:
    overrides = {"http_header_timeout_s": 1.0, "http_body_timeout_s": 1.0}
    async with api_with(database_url, kafka_bootstrap, pool, **overrides) as api:
        port = int(api.rsplit(":", 1)[1])

        writers: list[asyncio.StreamWriter] = []

        async def connect(head: bytes) -> tuple[asyncio.StreamReader, float]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)  # kept open by this side until the end
            writer.write(head)
            await writer.drain()
            return reader, time.monotonic()

        idle = await connect(b"")
        partial = await connect(f"POST {SIGN} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode())
        slow_body = await connect(
            f"POST {SIGN} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: 1000\r\n\r\n{{".encode()
        )
        huge_head = await connect(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'a' * 40_000}".encode()
        )
        unread = await connect(  # answered before its body was read: closed, not kept
            b"POST /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nab"
        )
        clients = {
            "idle": idle, "partial": partial, "slow_body": slow_body, "huge_head": huge_head,
            "unread": unread,
        }  # fmt: skip
        ends = await asyncio.gather(*(read_until_closed(r, 10) for r, _ in clients.values()))
        results = {
            name: (received.split(b"\r\n", 1)[0], closed - opened)
            for (name, (_, opened)), (received, closed) in zip(clients.items(), ends, strict=True)
        }
        for writer in writers:
            writer.close()
    assert results["idle"][0] == results["partial"][0] == b"HTTP/1.1 408 Request Timeout"
    assert results["slow_body"][0] == b"HTTP/1.1 408 Request Timeout"
    assert results["huge_head"][0] == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert results["unread"][0] == b"HTTP/1.1 404 Not Found"
    for name in ("idle", "partial", "slow_body"):
        assert 0.8 < results[name][1] < 4, (name, results[name])
    assert results["unread"][1] < 1


class CountingPool(BoundedPool):
    """Counts how often anything borrows a connection."""

    borrowed = 0


@pytest.mark.integration
async def test_a_flood_of_made_up_slugs_and_page_views_is_served_from_memory(
    database_url: str, kafka_bootstrap: str, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    borrowed = 0
    original = BoundedPool.acquire

    def counting(self: BoundedPool, *, timeout: float | None = None) -> Any:
        nonlocal borrowed
        borrowed += 1
        return original(self, timeout=timeout)

    monkeypatch.setattr(BoundedPool, "acquire", counting)
    async with (
        api_with(database_url, kafka_bootstrap, pool) as api,
        httpx.AsyncClient(base_url=api, timeout=30, limits=httpx.Limits(max_connections=64)) as c,
    ):
        assert (await c.post(SIGN, json=person())).status_code == 202
        assert (await c.get(f"/campaigns/{CAMPAIGN.slug}")).status_code == 200
        before, started = borrowed, time.monotonic()

        async def flood(n: int) -> int:
            slug = f"made-up-{n}"
            real = CAMPAIGN.slug
            paths = [f"/campaigns/{slug}", f"/campaigns/{slug}/widget",
                     f"/v1/campaigns/{slug}/totals", f"/v1/campaigns/{slug}/totals/stream",
                     f"/campaigns/{real}", f"/campaigns/{real}/widget"]  # fmt: skip
            if n % 7 == 0:
                return (await c.post(f"/v1/campaigns/{slug}/signatures", json=person())).status_code
            return (await c.get(paths[n % len(paths)])).status_code

        async def honest() -> list[float]:
            took = []
            for _ in range(10):  # a client of its own: not queued behind the flood's
                at = time.monotonic()
                async with httpx.AsyncClient(base_url=api, timeout=30) as own:
                    answer = await own.post(SIGN, json=person())
                took.append(time.monotonic() - at)
                assert answer.status_code == 202
                await asyncio.sleep(0.1)
            return took

        statuses, took = await asyncio.gather(
            asyncio.gather(*(flood(n) for n in range(2_000))), honest()
        )
        seconds = time.monotonic() - started
        queries = borrowed - before
    assert set(statuses) == {200, 404}
    assert max(took) < 1.0, took
    # 2,000 requests, and the queries of timers alone: a reload of every campaign at most
    # every half second, the page's data every 2 s, the partner keys every 2 s
    assert queries <= 3 * seconds + 6, (queries, seconds)


@pytest.mark.integration
async def test_a_busy_database_answers_503_and_signing_goes_on(
    database_url: str, kafka_bootstrap: str, pool: asyncpg.Pool
) -> None:
    async with (
        api_with(database_url, kafka_bootstrap, pool, db_acquire_timeout_s=0.5) as api,
        httpx.AsyncClient(base_url=api, timeout=30) as client,
    ):
        assert (await client.post(SIGN, json=person())).status_code == 202  # campaigns cached
        blocker = await asyncpg.connect(database_url)
        try:
            lock = blocker.transaction()
            await lock.start()
            await blocker.execute("LOCK TABLE confirmation_tokens IN ACCESS EXCLUSIVE MODE")
            # four confirmation pages wait on the lock and hold the API's four connections
            held = [
                asyncio.create_task(client.get(f"/confirm/{CAMPAIGN.slug}.{n:043d}"))
                for n in range(4)
            ]
            await asyncio.sleep(0.5)
            at = time.monotonic()
            page = await client.get(f"/campaigns/{CAMPAIGN.slug}")  # its updates need a query
            waited = time.monotonic() - at
            await asyncio.sleep(2.1)  # the campaigns' snapshot is stale: its reload must wait
            signing = []
            for _ in range(3):
                at = time.monotonic()
                assert (await client.post(SIGN, json=person())).status_code == 202
                signing.append(time.monotonic() - at)
            await lock.rollback()
            answers = await asyncio.gather(*held)
        finally:
            await blocker.close()
    assert page.status_code == 503 and page.headers["retry-after"] == "2"
    assert page.json() == {"errors": [{"field": "(service)", "reason": "unavailable"}]}
    assert 0.4 < waited < 2
    assert max(signing) < 0.5, signing
    assert all(a.status_code in (404, 503) for a in answers)


# --- `signatures api` as its own process ------------------------------------------------------


@contextlib.asynccontextmanager
async def api_process(settings: Settings, log_path: Path, **env: str) -> AsyncIterator[str]:
    """`signatures api` on a free port until the end; yields its URL once it is ready."""
    port = free_port()
    environ = {**os.environ, **settings_env(settings), "SIGNATURES_METRICS_PORT": "0", **env}
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "api", "--host", "127.0.0.1", "--port", str(port),
            env=environ, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient() as client, asyncio.timeout(60):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(f"{url}/readyz")).status_code == 200:
                            break
                    await asyncio.sleep(0.2)
            yield url
        finally:
            process.terminate()
            # uvicorn stops gracefully, then re-raises the signal it caught
            assert await asyncio.wait_for(process.wait(), 30) in (0, -15)


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


@pytest.mark.integration
@pytest.mark.slow
async def test_metrics_have_their_own_port(
    database_url: str, kafka_bootstrap: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await create_campaign(pool, CAMPAIGN)
    settings = await edge_settings(database_url, kafka_bootstrap)
    log = tmp_path / "api.log"
    async with api_process(settings, log) as api, httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(f"{api}{SIGN}", json=person())).status_code == 202
        [listening] = [line for line in log_lines(log) if line["event"] == "metrics_listening"]
        metrics = await client.get(f"http://127.0.0.1:{listening['port']}/metrics")
        public = await client.get(f"{api}/metrics")
    assert listening["worker"] == "api" and listening["port"] != int(api.rsplit(":", 1)[1])
    assert metrics.status_code == 200
    assert 'signatures_ingest_submissions_total{outcome="accepted",reason=""} 1.0' in metrics.text
    assert public.status_code == 404


@dataclass
class Trickler:
    """A client that sends `at_once`, then `drip` a byte at a time, and never finishes."""

    at_once: bytes
    drip: bytes
    opened: float | None = None
    closed: float | None = None
    answer: bytes = b""
    sent: int = 0


async def trickle(port: int, client: Trickler, every: float, until: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client.opened = time.monotonic()

    async def watch() -> None:
        while chunk := await reader.read(4096):
            client.answer += chunk
        client.closed = time.monotonic()

    watching = asyncio.create_task(watch())
    try:
        writer.write(client.at_once)
        for byte in client.drip:
            if watching.done() or time.monotonic() > until:
                break
            writer.write(bytes([byte]))
            client.sent += 1
            await asyncio.sleep(every)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(watching), max(0.0, until - time.monotonic()))
    except ConnectionError:
        client.closed = client.closed or time.monotonic()
    finally:
        watching.cancel()
        writer.close()


@pytest.mark.integration
@pytest.mark.slow
async def test_a_thousand_trickling_connections_do_not_stop_an_honest_signature(
    database_url: str, kafka_bootstrap: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4_096:  # 1,000 sockets here, and the client side of each honest request
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4_096), hard))
    await create_campaign(pool, CAMPAIGN)
    settings = await edge_settings(database_url, kafka_bootstrap)
    timeout = 5.0
    env = {"SIGNATURES_HTTP_HEADER_TIMEOUT_S": str(timeout),
           "SIGNATURES_HTTP_BODY_TIMEOUT_S": str(timeout)}  # fmt: skip
    head = f"POST {SIGN} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    slow_heads = [Trickler(b"", f"{head}X-Padding: {'a' * 4000}".encode()) for _ in range(500)]
    slow_bodies = [
        Trickler(f"{head}Content-Length: 4000\r\n\r\n".encode(), b"{" * 4000) for _ in range(500)
    ]
    everyone = slow_heads + slow_bodies
    async with api_process(settings, tmp_path / "api.log", **env) as api:
        port = int(api.rsplit(":", 1)[1])
        until = time.monotonic() + timeout + 5  # bounded: every client stops by itself
        tasks = [asyncio.create_task(trickle(port, c, 0.2, until)) for c in everyone]
        async with asyncio.timeout(10):
            while sum(1 for c in everyone if c.opened is not None) < len(everyone):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)

        took = []
        async with httpx.AsyncClient(timeout=5) as honest:
            for _ in range(10):
                open_now = sum(1 for c in everyone if c.closed is None)
                at = time.monotonic()
                answer = await honest.post(
                    f"{api}{SIGN}", json=person(), headers={"connection": "close"}
                )
                took.append((round(time.monotonic() - at, 3), open_now, answer.status_code))
                await asyncio.sleep(0.1)
        await asyncio.gather(*tasks)

    assert all(status == 202 for _, _, status in took), took
    assert all(seconds < 1.0 for seconds, _, _ in took), took
    assert all(open_now == len(everyone) for _, open_now, _ in took), took  # under attack
    for client in everyone:  # and the server let go of every one of them in time
        assert client.closed is not None and client.opened is not None, client.sent
        assert client.closed - client.opened < timeout + 2.5, client.closed - client.opened
        assert client.answer.startswith(b"HTTP/1.1 408"), client.answer[:40]
