"""Signing, framework-free: campaign check, edge validation, produce, the answer.

The single-signature route is the hot path of a surge, so it is served by a plain ASGI
handler (`SigningFastPath`) in front of the framework; the framework's route documents the
same endpoint in OpenAPI and answers through the same `Signer`. 202 means the broker has
acknowledged the submission. A duplicate signer gets exactly a first signer's answer.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.campaign_cache import CampaignCache
from ingest.edge import CLIENT_FIELDS, EdgeRejection, from_form, from_json_object
from ingest.edge_facts import EdgeFacts
from ingest.metrics import PRODUCE_ERRORS, SUBMISSIONS
from ingest.partner_auth import AuthRefusal, PartnerKeys
from runtime.failpoints import failpoint
from runtime.settings import Settings
from runtime.topics import Topics
from schemas.campaign import CampaignStatus
from schemas.reasons import Reason
from schemas.strict_json import JsonRefused, load_json
from schemas.submission import FieldError, Submission

JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"
SIGN_ROUTE = "/v1/campaigns/{slug}/signatures"
_SIGN_PATH = re.compile(r"^/v1/campaigns/([a-z0-9][a-z0-9-]{0,62})/signatures$")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> bytes:
        return orjson.dumps(self.payload)


def problem(status: int, field_name: str, reason: str, **headers: str) -> Answer:
    return Answer(status, {"errors": [{"field": field_name, "reason": reason}]}, headers)


class BodyTooLarge(Exception):
    pass


class Signer:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.pool = pool
        self.producer = producer
        self.topics = Topics.from_settings(settings)
        self.campaigns = CampaignCache(pool, public_min_count=settings.public_min_count)
        self.partners = PartnerKeys(pool)
        self.edge = EdgeFacts(settings)  # address prefix and form flags of web signatures

    async def refusal(self, slug: str) -> Answer | None:
        """404 for an unknown campaign, 409 for a closed one, else None."""
        status = await self.campaigns.status(slug)
        if status is None:
            SUBMISSIONS.labels("refused", Reason.UNKNOWN_CAMPAIGN.value).inc()
            return problem(404, "campaign", Reason.UNKNOWN_CAMPAIGN.value)
        if status is CampaignStatus.CLOSED:
            SUBMISSIONS.labels("refused", Reason.CAMPAIGN_CLOSED.value).inc()
            return problem(409, "campaign", Reason.CAMPAIGN_CLOSED.value)
        return None

    async def produce(self, submissions: Sequence[Submission]) -> Answer | None:
        """Hand submissions to Kafka and wait for the acknowledgement; 503 if it fails."""
        try:
            futures = [
                await self.producer.send(
                    self.topics.submitted,
                    value=s.model_dump_json().encode(),
                    key=s.submission_id.bytes,
                )
                for s in submissions
            ]
            async with asyncio.timeout(15):
                await asyncio.gather(*futures)
            failpoint("sign.after_broker_ack")  # `timeout`: the acknowledgement lost
        except (KafkaError, TimeoutError) as exc:
            PRODUCE_ERRORS.labels(type(exc).__name__).inc()
            return problem(503, "(service)", "broker_unavailable", **{"Retry-After": "2"})
        return None

    async def source(
        self, slug: str, authorization: bytes | None, query: bytes, *, required: bool
    ) -> str | Answer:
        """`web`, or `partner:NAME` from the request's key; else the refusal to answer."""
        who = await self.partners.authorize(authorization, query, slug, required=required)
        if who is None:
            return "web"
        if isinstance(who, AuthRefusal):
            SUBMISSIONS.labels("refused", who.reason).inc()
            return problem(who.status, "authorization", who.reason, **who.headers)
        return who.source

    async def sign(
        self,
        slug: str,
        content_type: str,
        read: BodyReader,
        source: str = "web",
        scope: Scope | None = None,
    ) -> Answer:
        """One signature from the web form, a JSON client or a partner (`source`); `scope`,
        the request's, gives a web signature its silent flags' facts (ingest/edge_facts)."""
        if (refused := await self.refusal(slug)) is not None:
            return refused
        try:
            body = await read(self.settings.max_signature_bytes)
        except BodyTooLarge:
            return problem(413, "(body)", "body_too_large")
        if content_type == FORM_TYPE:
            outcome = parse_form(body, campaign=slug, source=source)
        elif content_type in (JSON_TYPE, ""):
            outcome = parse_json(body, campaign=slug, source=source)
        else:
            return problem(415, "(body)", "unsupported_media_type")
        if isinstance(outcome, EdgeRejection):
            SUBMISSIONS.labels("refused", outcome.errors[0].reason.value).inc()
            return Answer(422, outcome.as_json())
        outcome = self.edge.stamp(outcome, scope, body if content_type == FORM_TYPE else None)
        if (failed := await self.produce([outcome])) is not None:
            return failed
        SUBMISSIONS.labels("accepted", "").inc()
        return Answer(202, {"submission_id": str(outcome.submission_id)})


BodyReader = Callable[[int], Awaitable[bytes]]


def parse_json(body: bytes, *, campaign: str, source: str) -> Submission | EdgeRejection:
    """A JSON body as a Submission, read as strictly as the workers read Kafka records."""
    try:
        parsed = load_json(body)
    except JsonRefused as refused:
        return EdgeRejection([refused.error])
    return from_json_object(parsed, campaign=campaign, source=source)


def parse_form(body: bytes, *, campaign: str, source: str = "web") -> Submission | EdgeRejection:
    """An HTML form post as a Submission; a field given twice is refused, not overridden."""
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=50, errors="strict"
        )
    except UnicodeDecodeError:
        return EdgeRejection([FieldError("(record)", Reason.INVALID_ENCODING)])
    except ValueError:  # more fields than any form of ours has
        return EdgeRejection([FieldError("(record)", Reason.MALFORMED_JSON)])
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form and name in CLIENT_FIELDS:
            return EdgeRejection([FieldError(name, Reason.DUPLICATE_FIELD)])
        form[name] = value
    return from_form(form, campaign=campaign, source=source)


def media_type(value: str) -> str:
    return value.split(";", maxsplit=1)[0].strip().lower()


class SigningFastPath:
    """Serves `POST /v1/campaigns/{slug}/signatures` without the framework's layers."""

    def __init__(self, app: ASGIApp, signer: Callable[[], Signer]) -> None:
        self.app = app
        self.signer = signer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _SIGN_PATH.match(scope["path"]) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route_template"] = SIGN_ROUTE
        headers = dict(scope["headers"])
        signer = self.signer()
        source = await signer.source(
            match[1], headers.get(b"authorization"), scope["query_string"], required=False
        )
        if isinstance(source, Answer):
            await send_answer(send, source)
            return
        content_type = media_type(headers.get(b"content-type", b"").decode("latin-1"))
        answer = await signer.sign(
            match[1], content_type, body_reader(scope, receive), source, scope
        )
        await send_answer(send, answer)


def body_reader(scope: Scope, receive: Receive) -> BodyReader:
    """Reads a request body, refusing (BodyTooLarge) before buffering more than `limit`."""
    declared = dict(scope["headers"]).get(b"content-length", b"")

    async def read(limit: int) -> bytes:
        if declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge
        chunks, size, more = [], 0, True
        while more:
            message: Message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    return read


async def send_answer(send: Send, answer: Answer) -> None:
    body = answer.body()
    raw_headers = [
        (b"content-type", JSON_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),  # it answers one person's submission
        *((name.lower().encode(), value.encode()) for name, value in answer.headers.items()),
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
