"""Silent flags: a flagged signature is stored with its reason, counts nowhere in public, and
its sender is told exactly what everyone else is told.

Against the real API, broker and PostgreSQL, with the flags on: the form's honeypot, a
form posted too fast (and one with a forged render time), a throwaway domain, and one
address prefix and one email domain past their rates. The unflagged submissions of the
same kinds are the control: their answers must equal the flagged ones byte for byte (but
for the submission id), and after the flagged ones are stored the public total and its
version must not have moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import REGISTRY
from rich.console import Console

from consumers.flags import first_flag, is_disposable
from consumers.service import WorkerKind, run_worker
from ingest.client_address import ClientAddresses
from ingest.form_guard import FormGuard
from ops.status import CampaignLine, Status, collect, render
from runtime.abuse_settings import networks
from runtime.campaigns import create_campaign
from runtime.kafka import read_to_end
from runtime.settings import Settings
from tests.helpers import CAMPAIGN, decrypted, encode, produce, submission, wait_until
from tests.pipeline import running_pipeline

SLUG = CAMPAIGN.slug  # confirmation off: an unflagged signature counts at once
SIGN = f"/v1/campaigns/{SLUG}/signatures"
TOKEN = re.compile(r'name="form_token" value="([^"]*)"')


# --- pure logic ------------------------------------------------------------------------


def test_throwaway_domains_and_their_subdomains_are_disposable() -> None:
    assert is_disposable("mailinator.com")
    assert is_disposable("x.mailinator.com")
    assert not is_disposable("example.org")
    assert not is_disposable("com")
    assert first_flag(None, "mailinator.com") == "disposable_domain"
    assert first_flag("honeypot", "mailinator.com") == "honeypot"  # the edge's comes first
    assert first_flag(None, "example.org") is None


def test_the_form_time_is_signed_and_judged() -> None:
    guard = FormGuard(b"k" * 32, min_seconds=3)
    token = guard.token(SLUG, now=1_000)
    body = f"first_name=A&form_token={token}".encode()
    assert guard.flag(body, SLUG, now=1_001) == "too_fast"
    assert guard.flag(body, SLUG, now=1_003) is None
    assert guard.flag(body, "another-campaign", now=1_010) == "too_fast"  # bound to one
    forged = token.replace("1000.", "900.")
    assert guard.flag(f"form_token={forged}".encode(), SLUG, now=1_010) == "too_fast"
    assert FormGuard(b"x" * 32, 3).flag(body, SLUG, now=1_010) == "too_fast"  # other key
    assert guard.flag(b"first_name=A", SLUG) is None  # not our page's form: not judged
    assert guard.flag(f"website=x&form_token={token}".encode(), SLUG, now=1_010) == "honeypot"
    assert guard.flag(b"website=+&x=1", SLUG) is None  # blank is what people send


def test_the_client_is_read_right_to_left_through_trusted_proxies_only() -> None:
    def scope(peer: str, *forwarded: str) -> dict[str, Any]:
        headers = [(b"x-forwarded-for", f.encode()) for f in forwarded]
        return {"client": (peer, 5000), "headers": headers}

    untrusted = ClientAddresses((), b"k" * 32)
    assert str(untrusted.address(scope("10.0.0.1", "198.51.100.7"))) == "10.0.0.1"
    proxies = ClientAddresses(networks("10.0.0.0/8"), b"k" * 32)
    assert str(proxies.address(scope("10.0.0.1", "198.51.100.7"))) == "198.51.100.7"
    spoofed = scope("10.0.0.1", "203.0.113.1, 198.51.100.7")  # the client wrote the left one
    assert str(proxies.address(spoofed)) == "198.51.100.7"
    two_hops = scope("10.0.0.1", "198.51.100.7", "10.0.0.2")  # two headers: one list
    assert str(proxies.address(two_hops)) == "198.51.100.7"
    assert str(proxies.address(scope("10.0.0.1", "garbage"))) == "10.0.0.1"
    assert str(proxies.address(scope("10.0.0.1", "10.0.0.3"))) == "10.0.0.3"  # all ours
    assert str(proxies.address(scope("10.0.0.1", "::ffff:198.51.100.7"))) == "198.51.100.7"
    assert str(proxies.address(scope("192.0.2.1", "198.51.100.7"))) == "192.0.2.1"
    v6 = ipaddress.ip_address("2001:db8:1:2::5")
    assert proxies.prefix(v6) == "2001:db8:1::/48"
    assert proxies.prefix(ipaddress.ip_address("198.51.100.7")) == "198.51.100.0/24"
    assert len(proxies.hash(v6)) == 32
    assert proxies.hash(v6) != ClientAddresses((), b"j" * 32).hash(v6)  # keyed
    same_64 = ipaddress.ip_address("2001:db8:1:2::6")
    assert proxies.limit_subject(v6) == proxies.limit_subject(same_64)


# --- against the real services -----------------------------------------------------------


def answer_of(response: httpx.Response) -> tuple[int, dict[str, str], str]:
    """What a sender is told, with the new submission id (and the clock) taken out."""
    headers = {k: v for k, v in response.headers.items() if k not in ("date", "content-length")}
    body = response.text
    with contextlib.suppress(ValueError):
        parsed = response.json()
        if isinstance(parsed, dict):
            parsed.pop("submission_id", None)
        body = json.dumps(parsed, sort_keys=True)
    return response.status_code, headers, body


def signer(email: str, **more: str) -> dict[str, str]:
    return {"first_name": "Marta", "last_name": "Kowalska", "email": email, "country": "PL", **more}


def unique_email(domain: str | None = None) -> str:
    """An address of its own, at a domain of its own unless one is given."""
    token = uuid.uuid4().hex[:10]
    return f"m.{token}@{domain or f'd{token}.example.org'}"


async def flag_of(pool: asyncpg.Pool, submission_id: str) -> str | None:
    found: str | None = await pool.fetchval(
        "SELECT flag FROM signatures WHERE submission_id = $1::uuid", submission_id
    )
    return found


def render_text(line: CampaignLine) -> str:
    """The status screen's tables as the operator reads them."""
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(*render(Status(datetime.now(UTC), [], None, {}, None, [line])))
    return console.export_text()


def flag_counts() -> dict[str, float]:
    counts: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if metric.name == "signatures_flags":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["reason"]] = sample.value
    return counts


@pytest.fixture
def flag_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "flags": True,
            "trusted_proxies": "127.0.0.1/32",  # the tests' requests come "through a proxy"
            "flag_prefix_rate": "3/10minutes",
            "flag_domain_rate": "3/10minutes",
            "form_min_seconds": 1.0,
        }
    )


@pytest.mark.integration
async def test_each_flag_is_stored_uncounted_and_answered_like_any_other(
    flag_settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_campaign(pool, CAMPAIGN)
    before_metrics = flag_counts()
    rare_domain = f"club-{uuid.uuid4().hex[:8]}.org"
    expected: dict[str, str | None] = {}  # email -> the flag it must be stored with

    async with (
        running_pipeline(flag_settings) as api,
        httpx.AsyncClient(base_url=api, timeout=30) as client,
    ):

        async def post(
            kind: str, via: str, flag: str | None = None, email: str | None = None, **extra: str
        ) -> httpx.Response:
            email = email or unique_email()
            expected[email] = flag
            headers = {"x-forwarded-for": via}
            if kind == "json":
                return await client.post(
                    SIGN, json={**signer(email), "consent": True, **extra}, headers=headers
                )
            if kind == "html":
                headers["accept"] = "text/html"
            return await client.post(
                SIGN, data={**signer(email), "consent": "on", **extra}, headers=headers
            )

        async def page_token() -> str:
            match = TOKEN.search((await client.get(f"/campaigns/{SLUG}?lang=en")).text)
            assert match is not None
            return match[1]

        # the control: one unflagged submission of each kind, and the first three of a
        # prefix and of a domain (the rate is 3 per 10 minutes), each else on its own
        waited = await page_token()
        await asyncio.sleep(1.2)
        controls = {
            "json": await post("json", "198.51.100.10"),
            "form": await post("form", "198.51.100.11", website=""),
            "html": await post("html", "198.51.100.12", form_token=waited),
        }
        for n in range(3):
            await post("json", f"203.0.113.{n + 1}")
            await post("json", f"100.64.{n}.1", email=unique_email(rare_domain))
            await post("json", f"198.18.{n}.1", email=unique_email("gmail.com"))  # exempt

        async def published(total: int) -> dict[str, Any] | None:
            answer = (await client.get(f"/v1/campaigns/{SLUG}/totals")).json()
            return answer if answer["total"] == total else None

        async def rows(n: int) -> bool:
            return bool(await pool.fetchval("SELECT count(*) FROM signatures") == n)

        await wait_until(lambda: rows(12), timeout=60, interval=0.2)

        async def shows(total: int) -> bool:
            return await published(total) is not None

        await wait_until(lambda: shows(12), timeout=30, interval=0.2)
        before = await published(12)
        assert before is not None

        # every flag once; each sender told exactly what the control's sender was told
        fresh = await page_token()
        forged = f"{int(time.time()) - 60}.{'0' * 32}"
        flagged = {
            "honeypot": await post(
                "form", "198.51.100.20", "honeypot", website="http://spam.example"
            ),
            "too_fast": await post("html", "198.51.100.21", "too_fast", form_token=fresh),
            "forged_time": await post("html", "198.51.100.22", "too_fast", form_token=forged),
            "disposable_domain": await post(
                "json", "198.51.100.23", "disposable_domain", unique_email("mailinator.com")
            ),
            "prefix_rate": await post("json", "203.0.113.200", "prefix_rate"),
            "domain_rate": await post(
                "json", "100.64.9.1", "domain_rate", unique_email(rare_domain)
            ),
        }
        exempt = await post("json", "198.18.9.1", email=unique_email("gmail.com"))
        channel = {"honeypot": "form", "too_fast": "html", "forged_time": "html"}
        for name, response in flagged.items():
            assert answer_of(response) == answer_of(controls[channel.get(name, "json")]), name
        assert answer_of(exempt) == answer_of(controls["json"])

        await wait_until(lambda: rows(19), timeout=60, interval=0.2)
        await asyncio.sleep(flag_settings.totals_poll_s * 5)  # the counter has looked again
        after = await published(13)  # the exempt domain's signature, and nothing flagged
        assert after is not None
        assert after["version"] == before["version"] + 1

        # what the person on call sees: the busiest sources of the last hour, what is held
        [line] = (await collect(flag_settings, pool, sample_s=0)).campaigns
        assert list(line.busiest_prefixes.items())[:2] == [
            ("198.51.100.0/24", 7), ("203.0.113.0/24", 4),
        ]  # fmt: skip
        assert line.busiest_domains[rare_domain] == 4
        assert line.busiest_domains["gmail.com"] == 4
        assert line.held == 6
        assert "198.51.100.0/24 7" in str(render_text(line))

    stored = {r["email"]: r["flag"] for r in await decrypted(pool)}
    assert stored == expected
    assert await pool.fetchval("SELECT count(*) FROM signatures WHERE counted") == 13
    assert await pool.fetchval("SELECT total FROM campaign_totals") == 13

    # only prefixes and keyed hashes are kept, never an address
    for row in await pool.fetch("SELECT client_prefix, client_hash FROM signatures"):
        assert row["client_prefix"].prefixlen == 24
        assert len(row["client_hash"]) == 16
    dump = " ".join(str(dict(r)) for r in await pool.fetch("SELECT * FROM signatures"))
    for address in ("198.51.100.20", "203.0.113.200", "100.64.9.1"):
        assert address not in dump

    grown = {reason: n - before_metrics.get(reason, 0) for reason, n in flag_counts().items()}
    assert {r: n for r, n in grown.items() if n} == {
        "honeypot": 1, "too_fast": 2, "disposable_domain": 1, "prefix_rate": 1, "domain_rate": 1,
    }  # fmt: skip


@pytest.mark.integration
async def test_a_client_cannot_set_the_edge_facts(
    flag_settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_campaign(pool, CAMPAIGN)
    async with (
        running_pipeline(flag_settings) as api,
        httpx.AsyncClient(base_url=api, timeout=30) as client,
    ):
        for field, value in (
            ("edge_flag", "too_fast"),
            ("client_prefix", "10.0.0.0/24"),
            ("client_hash", "0" * 32),
        ):
            refused = await client.post(
                SIGN, json={**signer(unique_email()), "consent": True, field: value}
            )
            assert refused.status_code == 422
            assert refused.json() == {"errors": [{"field": field, "reason": "unknown_field"}]}
        posted = await client.post(
            SIGN,
            data={
                **signer(unique_email()),
                "consent": "on",
                "client_prefix": "10.0.0.0/24",
                "client_hash": "0" * 32,
                "edge_flag": "honeypot",
            },
        )
        assert posted.status_code == 202

        async def stored() -> bool:
            return bool(await pool.fetchval("SELECT count(*) FROM signatures") == 1)

        await wait_until(stored, timeout=60, interval=0.2)
    row = await pool.fetchrow("SELECT client_prefix, client_hash, flag, counted FROM signatures")
    assert row is not None
    assert str(row["client_prefix"]) == "127.0.0.0/24"  # the connection's, not the form's
    assert row["client_hash"] != bytes(16)
    assert row["flag"] is None
    assert row["counted"] is True


@pytest.mark.integration
async def test_a_batch_of_only_flagged_signatures_is_stored_and_announced(
    flag_settings: Settings, pool: asyncpg.Pool
) -> None:
    """Nothing in the batch counts, yet every row gets its accepted event (with the version
    that was current) and the worker goes on."""
    await create_campaign(pool, CAMPAIGN)
    held = [
        submission(email=unique_email(), edge_flag="honeypot", client_prefix="203.0.113.0/24"),
        submission(email=unique_email("mailinator.com")),
    ]
    await produce(flag_settings, encode(held))
    stats = await asyncio.wait_for(
        run_worker(WorkerKind.PERSIST, flag_settings, asyncio.Event(), drain=True), 60
    )
    assert stats.outcomes["inserted"] == 2
    assert stats.outcomes["flagged_honeypot"] == 1
    assert stats.outcomes["flagged_disposable_domain"] == 1
    events = [
        json.loads(r.value or b"")
        for r in await read_to_end(flag_settings, flag_settings.topic_accepted)
    ]
    assert sorted(e["submission_id"] for e in events) == sorted(s["submission_id"] for s in held)
    assert {e["totals_version"] for e in events} == {0}
    row = await pool.fetchrow("SELECT total, version FROM campaign_totals")
    assert row is not None
    assert (row["total"], row["version"]) == (0, 0)
