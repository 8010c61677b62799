"""Every bad input anyone can send gets a clear answer; none crashes or stalls the pipeline.

The cases live in `tests/corpus/` as JSON lines, one file per channel: a name, the payload
and the expected outcome. A payload is `fields` (a valid base submission with these fields
changed, `drop` removing some), `text` (raw UTF-8; `$base` stands for the base
submission's members, `$base(-f)` for them without field `f`, `$repeat(s*n)` for `s` n
times), `base64` (bytes that are not UTF-8), `form` (an urlencoded body) or `value: null`
(a Kafka tombstone). Kafka cases expect a reason code, `accepted`, `same person as NAME` or
`redelivery of NAME`; HTTP cases expect a status and the field errors of its answer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from consumers.service import WorkerKind, run_worker
from consumers.validate import Rejection, decode, decode_strictly
from ingest.edge import EdgeRejection
from ingest.signing import parse_form, parse_json
from runtime.campaigns import close_campaign, create_campaign
from runtime.kafka import make_producer, read_to_end
from runtime.offsets import committed_offsets, high_watermarks
from runtime.partners import create_partner, new_key, revoke_partner
from runtime.settings import Settings
from runtime.topics import ensure_topics
from schemas.campaign import Confirmation, NewCampaign
from schemas.events import DeadLetterHeaders
from schemas.reasons import Reason
from schemas.submission import Submission
from tests.conftest import make_settings
from tests.helpers import CAMPAIGN, decrypted, submission
from tests.invariants import History, Told, check
from tests.pipeline import serving_api
from tests.test_common_record import agrees_with_the_model

CORPUS = Path(__file__).resolve().parent / "corpus"
MAX_RECORD_BYTES = 16_384
MAX_BODY_BYTES = 1_000_000
MAX_BATCH_BYTES = 2_000_000
CLOSED = NewCampaign(
    confirmation=Confirmation.OFF, slug="closed-campaign", title="Closed", target="t", goal=10
)
SECOND = NewCampaign(
    confirmation=Confirmation.OFF, slug="second-campaign", title="Second", target="t", goal=10
)
DB_REASONS = {Reason.UNKNOWN_CAMPAIGN, Reason.CAMPAIGN_CLOSED, Reason.SUBMISSION_ID_REUSED}
_REPEAT = re.compile(r"\$repeat\((.*?)\*(\d+)\)", re.DOTALL)
_BASE = re.compile(r"\$base(?:\(([^)]*)\))?")


def submission_id_of(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"corpus:{name}"))


def kafka_base(name: str) -> dict[str, Any]:
    """A valid submission, with an id and an email of its own for each corpus entry."""
    sid = submission_id_of(name)
    return {
        "submission_id": sid,
        "campaign": CAMPAIGN.slug,
        "first_name": "Ottavia",
        "last_name": "Quarantotto",
        "email": f"signer.{sid[:8]}@example.org",
        "country": "IT",
        "consent": True,
        "source": "partner:corpus",
        "submitted_at": "2026-03-01T12:00:00+00:00",
    }


def http_base(name: str) -> dict[str, Any]:
    return {
        "first_name": "Ottavia",
        "last_name": "Quarantotto",
        "email": f"signer.{submission_id_of(name)[:8]}@example.org",
        "country": "it",
        "consent": True,
    }


@dataclass(frozen=True)
class Entry:
    name: str
    expect: str
    payload: bytes | None
    body: dict[str, Any] | None  # the object it was built from, when it was
    spec: dict[str, Any]


def _expand(text: str, base: dict[str, Any]) -> str:
    def members(match: re.Match[str]) -> str:
        dropped = {f.strip().lstrip("-") for f in (match[1] or "").split(",") if f.strip()}
        kept = {k: v for k, v in base.items() if k not in dropped}
        return json.dumps(kept, ensure_ascii=False)[1:-1]

    text = _REPEAT.sub(lambda m: m[1] * int(m[2]), text)
    return _BASE.sub(members, text)


def _build(
    spec: dict[str, Any], base: dict[str, Any]
) -> tuple[bytes | None, dict[str, Any] | None]:
    if "value" in spec:
        return None, None
    if "base64" in spec:
        return base64.b64decode(spec["base64"]), None
    if "form" in spec:
        return spec["form"].encode(), None
    if "text" in spec:
        return _expand(spec["text"], base).encode(), None
    body = {k: v for k, v in base.items() if k not in spec.get("drop", [])}
    body.update(spec.get("fields", {}))
    raw = json.dumps(body, ensure_ascii=False).encode()
    return raw + b" " * spec.get("pad_bytes", 0), body


def load(channel: str) -> list[Entry]:
    specs = [json.loads(line) for line in (CORPUS / f"{channel}.jsonl").read_text().splitlines()]
    entries: dict[str, Entry] = {}
    for spec in specs:
        name = spec["name"]
        if channel == "kafka":
            base = kafka_base(name)
            if "id_of" in spec:
                base["submission_id"] = submission_id_of(spec["id_of"])
        else:
            base = http_base(name)
        payload, body = _build(spec, base)
        if "same_as" in spec:
            payload, body = entries[spec["same_as"]].payload, entries[spec["same_as"]].body
        entries[name] = Entry(name, spec["expect"], payload, body, spec)
    return list(entries.values())


KAFKA_CORPUS = load("kafka")
HTTP_CORPUS = load("http")


def expected_reason(entry: Entry) -> Reason | None:
    """The reason code a Kafka entry is dead-lettered under; None if it is kept."""
    if entry.expect == "accepted" or entry.expect.startswith(("same person as", "redelivery")):
        return None
    return Reason(entry.expect)


# --- the worker's decoding, entry by entry ------------------------------------------------


@pytest.mark.parametrize("entry", KAFKA_CORPUS, ids=[e.name for e in KAFKA_CORPUS])
def test_kafka_corpus_decodes_to_its_expected_outcome(entry: Entry) -> None:
    outcome = decoded_once(entry.payload)
    reason = expected_reason(entry)
    if reason is None or reason in DB_REASONS:  # decided against the database
        assert isinstance(outcome, Submission), outcome
    else:
        assert isinstance(outcome, Rejection)
        assert outcome.reason is reason, outcome.detail


def test_markup_and_formulas_are_kept_exactly_as_given() -> None:
    for entry in KAFKA_CORPUS:
        if entry.expect != "accepted" or entry.body is None:
            continue
        outcome = decode(entry.payload, MAX_RECORD_BYTES)
        assert isinstance(outcome, Submission)
        if entry.name.startswith(("HTML", "spreadsheet", "SQL")):
            given = (entry.body["first_name"], entry.body["last_name"])
            assert (outcome.first_name, outcome.last_name) == given


# --- the whole Kafka corpus through a real worker -----------------------------------------


@dataclass(frozen=True)
class Produced:
    entry: Entry | None  # None: a valid record interleaved with the corpus
    body: dict[str, Any] | None
    partition: int
    offset: int


async def produce_keyed(
    settings: Settings, items: list[tuple[bytes | None, bytes]]
) -> list[tuple[int, int]]:
    """Produce in order; records with the same key (submission id) share a partition."""
    producer = make_producer(settings)
    await producer.start()
    try:
        futures = [
            await producer.send(settings.topic_submitted, value=value, key=key)
            for value, key in items
        ]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metadata]


def key_of(entry: Entry) -> bytes:
    name = entry.spec.get("same_as") or entry.spec.get("id_of") or entry.name
    return uuid.UUID(submission_id_of(name)).bytes


def interleaved(entries: list[Entry]) -> list[tuple[Entry | None, dict[str, Any] | None]]:
    """The corpus with valid submissions before, between (every ten entries) and after."""
    out: list[tuple[Entry | None, dict[str, Any] | None]] = [(None, submission()) for _ in range(3)]
    for n, entry in enumerate(entries):
        out.append((entry, entry.body))
        if n % 10 == 9:
            out.append((None, submission()))
    out.extend((None, submission()) for _ in range(3))
    return out


def record_history(history: History, produced: list[Produced]) -> None:
    """What each record's sender was told (acknowledged by the broker) and who it names."""
    for item in produced:
        if item.body is not None:
            for key in ("email", "first_name", "last_name"):
                value = item.body.get(key)
                if isinstance(value, str) and len(value.strip()) >= 6:
                    history.sentinels.add(value.strip())
            history.sentinels.update(k for k in item.body if "@" in k)
        entry = item.entry
        if entry is None:
            history.record(item.body or {}, told=Told.ACKNOWLEDGED)
            continue
        body = entry.body
        if body is None or not isinstance(body.get("submission_id"), str):
            continue
        if "same_as" in entry.spec or "id_of" in entry.spec:
            continue  # the id of another entry: checked on its own below
        person = entry.expect.removeprefix("same person as ")
        person = entry.name if person == entry.expect else person
        history.record(
            body, told=Told.ACKNOWLEDGED, valid=expected_reason(entry) is None, person=person
        )


async def produce_plan(
    settings: Settings, plan: list[tuple[Entry | None, dict[str, Any] | None]]
) -> list[Produced]:
    items = [
        (entry.payload, key_of(entry)) if entry else (json.dumps(body).encode(), uuid.uuid4().bytes)
        for entry, body in plan
    ]
    offsets = await produce_keyed(settings, items)
    return [
        Produced(entry, body, partition, offset)
        for (entry, body), (partition, offset) in zip(plan, offsets, strict=True)
    ]


async def drain(settings: Settings, kind: WorkerKind) -> None:
    await asyncio.wait_for(run_worker(kind, settings, asyncio.Event(), drain=True), 120)


def same_people(entries: list[Entry]) -> dict[str, set[str]]:
    """The submission ids of each person signing more than once, by the first entry's name."""
    people: dict[str, set[str]] = defaultdict(set)
    for entry in entries:
        if entry.expect.startswith("same person as ") and entry.body is not None:
            leader = entry.expect.removeprefix("same person as ")
            people[leader] |= {submission_id_of(leader), entry.body["submission_id"]}
    return people


@pytest.mark.integration
@pytest.mark.slow
async def test_kafka_corpus_through_a_real_worker(settings: Settings, pool: asyncpg.Pool) -> None:
    for campaign in (CAMPAIGN, CLOSED, SECOND):
        await create_campaign(pool, campaign)
    await close_campaign(pool, CLOSED.slug)
    # Round one: everything, so a reused id may meet its original in the same batch.
    produced = await produce_plan(settings, interleaved(KAFKA_CORPUS))
    await drain(settings, WorkerKind.PERSIST)
    # Round two: the reused ids again, now that their original is stored, the other
    # signers first: the id still belongs to the stored row.
    reuses = [e for e in KAFKA_CORPUS if "same_as" in e.spec or "id_of" in e.spec][::-1]
    produced += await produce_plan(settings, [(e, e.body) for e in reuses])
    await drain(settings, WorkerKind.PERSIST)
    await drain(settings, WorkerKind.COUNT)

    letters: dict[tuple[int, int], list[DeadLetterHeaders]] = defaultdict(list)
    for record in await read_to_end(settings, settings.topic_rejected, timeout=30):
        headers = DeadLetterHeaders.from_kafka(list(record.headers))
        assert headers.origin_topic == settings.topic_submitted
        letters[(headers.origin_partition, headers.origin_offset)].append(headers)
    rows = {str(r["submission_id"]): r for r in await decrypted(pool)}
    duplicates = {
        str(r["submission_id"])
        for r in await pool.fetch("SELECT submission_id FROM duplicate_submissions")
    }

    wrong: list[str] = []
    for item in produced:
        at = (item.partition, item.offset)
        reason = expected_reason(item.entry) if item.entry else None
        name = item.entry.name if item.entry else "valid record"
        got = [h.reason.value for h in letters.pop(at, [])]
        if got != ([reason.value] if reason else []):
            wrong.append(f"{name}: dead letters {got}, expected {reason}")
    assert not wrong
    assert not letters, f"dead letters of no record: {letters}"

    for item in produced:
        if item.entry is None and item.body is not None:
            assert item.body["submission_id"] in rows
    leaders = same_people(KAFKA_CORPUS)
    for leader, ids in leaders.items():
        stored = ids & rows.keys()
        assert len(stored) == 1, f"{leader}: {len(stored)} rows"
        assert ids - stored <= duplicates, f"{leader}: a repeat was neither stored nor counted"
    for entry in KAFKA_CORPUS:
        if entry.expect == "accepted" and entry.body is not None and entry.name not in leaders:
            row = rows.get(entry.body["submission_id"])
            assert row is not None, entry.name
            if entry.name.startswith(("HTML", "spreadsheet", "SQL")):
                assert (row["first_name"], row["last_name"]) == (
                    entry.body["first_name"],
                    entry.body["last_name"],
                )

    committed = await committed_offsets(settings, settings.persist_group, settings.topic_submitted)
    assert committed == await high_watermarks(settings, settings.topic_submitted)

    history = History()
    record_history(history, produced)
    problems = await check(settings, pool, history)
    # The reused id's dead letters carry the id of a stored signature: the other person's
    # record was refused, and the original stays stored (checked above).
    reused_original = f"dead-lettered {submission_id_of('reuse: original')} was stored"
    assert [p for p in problems if p != reused_original] == []


# --- the HTTP corpus against the real API -------------------------------------------------


@pytest.fixture
async def api_settings(database_url: str, kafka_bootstrap: str) -> Settings:
    s = make_settings(
        database_url,
        kafka_bootstrap,
        max_signature_bytes=MAX_BODY_BYTES,  # the parser, not the size limit, sees the cases
        max_batch_bytes=MAX_BATCH_BYTES,
    )
    await ensure_topics(s, kafka_bootstrap)
    return s


@pytest.fixture
async def api(api_settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[str]:
    for campaign in (CAMPAIGN, CLOSED):
        await create_campaign(pool, campaign)
    await close_campaign(pool, CLOSED.slug)
    async with serving_api(api_settings) as url:
        yield url


@pytest.fixture
async def partner_keys(api: str, pool: asyncpg.Pool) -> dict[str, str]:
    """Keys for the corpus's `key` values: the batch default, another scope, revoked."""
    _, corpus = await create_partner(pool, "corpus", [CAMPAIGN.slug], confirms=False)
    _, elsewhere = await create_partner(pool, "elsewhere", [CLOSED.slug], confirms=False)
    _, revoked = await create_partner(pool, "revoked", None, confirms=False)
    await revoke_partner(pool, "revoked")
    return {"corpus": corpus, "other_scope": elsewhere, "revoked": revoked, "unknown": new_key()}


async def post_entry(
    client: httpx.AsyncClient, api: str, entry: Entry, keys: dict[str, str]
) -> httpx.Response:
    campaign = entry.spec.get("campaign", CAMPAIGN.slug)
    url = f"{api}/v1/campaigns/{campaign}/signatures"
    content_type = entry.spec.get("content_type", "application/json")
    if "form" in entry.spec:
        content_type = "application/x-www-form-urlencoded"
    # `key`: whose Authorization header (none: no header); a batch sends the corpus key
    key = entry.spec.get("key", "corpus" if entry.spec.get("route") == "batch" else "none")
    headers = {"content-type": content_type}
    if key in keys:
        headers["authorization"] = f"Bearer {keys[key]}"
    elif key != "none":
        headers["authorization"] = key
    if entry.spec.get("route") == "batch":
        url += "/batch"
        headers["content-type"] = "application/x-ndjson"
    # `query`: a query string; $key stands for the corpus key
    if query := entry.spec.get("query", "").replace("$key", keys["corpus"]):
        url += f"?{query}"
    return await client.post(url, content=entry.payload, headers=headers)


def expected_answer(expect: str) -> tuple[int, list[dict[str, str]]]:
    """'422 consent: invalid_field' as (422, [{"field": "consent", "reason": ...}])."""
    status, _, rest = expect.partition(" ")
    errors = []
    if rest and int(status) != 200:
        for error in rest.split("; "):  # several errors: 'a: unknown_field; b: unknown_field'
            field, _, reason = error.partition(": ")
            errors.append({"field": field, "reason": reason})
    return int(status), errors


def batch_outcomes(answer: dict[str, Any]) -> list[str]:
    return [
        "accepted" if line["status"] == "accepted" else line["errors"][0]["reason"]
        for line in answer["results"]
    ]


@pytest.mark.integration
async def test_http_corpus_against_the_api(
    api_settings: Settings, api: str, partner_keys: dict[str, str]
) -> None:
    accepted_ids: set[str] = set()
    wrong: list[str] = []
    async with httpx.AsyncClient(timeout=60) as client:
        for entry in HTTP_CORPUS:
            answer = await post_entry(client, api, entry, partner_keys)
            status, errors = expected_answer(entry.expect)
            if answer.status_code != status:
                wrong.append(f"{entry.name}: {answer.status_code} {answer.text[:200]}")
                continue
            if status == 202:
                accepted_ids.add(answer.json()["submission_id"])
            elif status == 200:
                expected = entry.expect.removeprefix("200 ").split(", ")
                if batch_outcomes(answer.json()) != expected:
                    wrong.append(f"{entry.name}: {batch_outcomes(answer.json())}")
                accepted_ids.update(
                    line["submission_id"]
                    for line in answer.json()["results"]
                    if line["status"] == "accepted"
                )
            else:
                assert answer.headers["content-type"] == "application/json"
                if answer.json() != {"errors": errors}:
                    wrong.append(f"{entry.name}: {answer.text[:200]}")
            for value in (entry.body or {}).values():
                if isinstance(value, str) and len(value) >= 6 and status != 202:
                    assert value not in answer.text, entry.name
            if status == 401:
                assert answer.headers["www-authenticate"].startswith("Bearer"), entry.name
            shown = str(answer.headers) + answer.text
            assert not any(key in shown for key in partner_keys.values()), entry.name
    assert wrong == []

    on_topic = [
        json.loads(record.value)["submission_id"]
        for record in await read_to_end(api_settings, api_settings.topic_submitted, timeout=30)
    ]
    assert sorted(on_topic) == sorted(accepted_ids)  # nothing refused reached Kafka


async def raw_request(api: str, head: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = api.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.encode())
    await writer.drain()
    return reader, writer


def request_head(api: str, **headers: str) -> str:
    lines = [
        f"POST /v1/campaigns/{CAMPAIGN.slug}/signatures HTTP/1.1",
        f"Host: {api.removeprefix('http://')}",
        "Content-Type: application/json",
        *(f"{name.replace('_', '-')}: {value}" for name, value in headers.items()),
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


@pytest.mark.integration
async def test_huge_declared_length_is_refused_before_the_body_arrives(api: str) -> None:
    reader, writer = await raw_request(api, request_head(api, Content_Length=str(10**12)))
    try:
        writer.write(b'{"first_name": ')  # a few bytes of a body that would never end
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 413")


@pytest.mark.integration
async def test_endless_chunked_body_is_refused_once_past_the_limit(api: str) -> None:
    reader, writer = await raw_request(api, request_head(api, Transfer_Encoding="chunked"))
    answer = asyncio.create_task(reader.readline())
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
    sent = 0
    try:
        # Keep sending and never send the last chunk: only a server that stops reading at
        # the limit can answer; give up at ten times the limit.
        while not answer.done() and sent < 10 * MAX_BODY_BYTES:
            writer.write(chunk)
            try:
                await asyncio.wait_for(writer.drain(), 5)
            except (ConnectionError, TimeoutError):
                break
            sent += 64 * 1024
            await asyncio.sleep(0)
        status_line = await asyncio.wait_for(answer, 30)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 413")
    assert sent < 10 * MAX_BODY_BYTES


# --- fuzzers ------------------------------------------------------------------------------

FUZZ = hypothesis_settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
any_text = st.text(st.characters(exclude_categories=())) | st.text()  # lone surrogates too
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
FIELDS = sorted(Submission.model_fields)
_DETAIL = re.compile(r"(\(record\)|\(unnamed\)|[a-z_]{1,40}): ([a-z_]+)")
BASE_PII = ("Ottavia", "Quarantotto", "@example.org")


def assert_clear_answer(outcome: Submission | Rejection, pii: tuple[str, ...]) -> None:
    """A Submission, or a Rejection with a known reason and a detail made of names only."""
    if isinstance(outcome, Submission):
        return
    assert outcome.reason in set(Reason)
    if outcome.reason not in (Reason.EMPTY_RECORD, Reason.RECORD_TOO_LARGE):
        for part in outcome.detail.split("; "):
            match = _DETAIL.fullmatch(part)
            assert match is not None, outcome.detail
            assert match[2] in {r.value for r in Reason}
    for secret in pii:
        assert secret not in outcome.detail


def decoded_once(raw: bytes | None) -> Submission | Rejection:
    """`decode`, checked against the strict reading: the fast paths never decide otherwise."""
    outcome = decode(raw, MAX_RECORD_BYTES)
    if raw and len(raw) <= MAX_RECORD_BYTES:
        assert outcome == decode_strictly(raw)
        agrees_with_the_model(raw)  # nor does the common-record reader
    return outcome


@FUZZ
@given(st.binary(max_size=2000))
def test_decode_survives_arbitrary_bytes(value: bytes) -> None:
    assert_clear_answer(decoded_once(value), ())


@pytest.mark.parametrize(
    "raw",
    [
        b'{"consent": false, "consent": true}',
        b'{"email": "a@example.org" , "em\\u0061il" :"b@example.org"}',
        b'{"first_name": "x\\":y", "first_name":"z"}',
    ],
)
def test_a_key_given_twice_is_never_decided_by_the_fast_path(raw: bytes) -> None:
    fields = json.dumps(kafka_base("twice"))[1:-1].encode()
    record = raw[:-1] + b", " + fields + b"}"
    outcome = decoded_once(record)
    assert isinstance(outcome, Rejection)
    assert outcome.reason is Reason.DUPLICATE_FIELD


@FUZZ
@given(json_values)
def test_decode_survives_arbitrary_json(value: object) -> None:
    raw = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert_clear_answer(decoded_once(raw), ())


@FUZZ
@given(st.sampled_from(FIELDS), json_values)
def test_decode_survives_any_value_in_any_field(field: str, value: object) -> None:
    raw = json.dumps({**kafka_base("fuzz"), field: value}).encode()  # \u escapes
    outcome = decoded_once(raw)
    assert_clear_answer(outcome, BASE_PII)
    if isinstance(outcome, Submission):
        assert outcome.model_dump_json()  # what is kept can be stored and published


def edge_answer(outcome: Submission | EdgeRejection) -> Submission | Rejection:
    """The edge's answer in the workers' terms; what it accepts must pass the workers too."""
    if isinstance(outcome, EdgeRejection):
        errors = outcome.errors
        detail = "; ".join(f"{e.field}: {e.reason.value}" for e in errors)
        return Rejection(errors[0].reason, detail)
    produced = outcome.model_dump_json().encode()
    assert isinstance(decode(produced, MAX_RECORD_BYTES), Submission)
    return outcome


@FUZZ
@given(st.binary(max_size=2000))
def test_signing_body_parsing_survives_arbitrary_bytes(body: bytes) -> None:
    assert_clear_answer(edge_answer(parse_json(body, campaign="cecenia", source="web")), ())
    assert_clear_answer(edge_answer(parse_form(body, campaign="cecenia")), ())


@FUZZ
@given(st.sampled_from([*sorted(http_base("fuzz")), "submitted_at", "language"]), json_values)
def test_signing_json_survives_any_value_in_any_field(field: str, value: object) -> None:
    body = json.dumps({**http_base("fuzz"), field: value}).encode()  # \u escapes
    outcome = parse_json(body, campaign="cecenia", source="web")
    assert_clear_answer(edge_answer(outcome), BASE_PII)


@FUZZ
@given(st.sampled_from(sorted(http_base("fuzz"))), any_text)
def test_signing_form_survives_any_value_in_any_field(field: str, value: str) -> None:
    form = {**http_base("fuzz"), "consent": "on", field: value}
    body = urlencode(form, encoding="utf-8", errors="surrogatepass").encode()
    assert_clear_answer(edge_answer(parse_form(body, campaign="cecenia")), BASE_PII)
