"""The ingest API (one ASGI app): signatures in, totals out, health and metrics.

202 means the broker has acknowledged the submission: from then on it is never lost. A
duplicate signer gets exactly the answer a first-time signer gets; dedupe happens later.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.edge import EdgeRejection, from_form, from_json_object
from ingest.metrics import PRODUCE_ERRORS, REQUEST_SECONDS, SUBMISSIONS
from runtime.campaigns import campaign_statuses, read_totals
from runtime.db import create_pool, schema_is_current
from runtime.kafka import make_producer
from runtime.logs import get_logger
from runtime.settings import Settings
from runtime.topics import Topics
from schemas.campaign import CampaignStatus
from schemas.reasons import Reason
from schemas.submission import FieldError, Submission

log = get_logger("ingest.api")

MAX_BATCH_LINES = 10_000
_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"


class BodyTooLarge(Exception):
    pass


class CampaignCache:
    """Campaign statuses, refreshed in the background; the workers re-check exactly."""

    def __init__(self, pool: asyncpg.Pool, refresh_s: float = 2.0) -> None:
        self._pool = pool
        self._refresh_s = refresh_s
        self._statuses: dict[str, CampaignStatus] = {}
        self._loaded_at = 0.0

    async def status(self, slug: str) -> CampaignStatus | None:
        if slug not in self._statuses or time.monotonic() - self._loaded_at > self._refresh_s:
            self._statuses = await campaign_statuses(self._pool)
            self._loaded_at = time.monotonic()
        return self._statuses.get(slug)


class State:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.pool = pool
        self.producer = producer
        self.topics = Topics.from_settings(settings)
        self.campaigns = CampaignCache(pool)


def _problem(status: int, errors: list[dict[str, str]], **headers: str) -> JSONResponse:
    return JSONResponse({"errors": errors}, status_code=status, headers=headers or None)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) before buffering more than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings: Settings) -> FastAPI:
    state: State | None = None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        nonlocal state
        pool = await create_pool(settings.database_url, max_size=4)
        producer = make_producer(settings)
        try:
            await producer.start()
            state = State(settings, pool, producer)
            yield
        finally:
            await producer.stop()
            await pool.close()

    def current() -> State:
        assert state is not None  # noqa: S101 - set by the lifespan before any request
        return state

    app = FastAPI(
        title="Signatures ingest API",
        version="1",
        lifespan=lifespan,
        description="Petition signatures in; exact, live totals out.",
    )
    app.add_middleware(CanonicalLogLine)

    async def check_campaign(slug: str) -> JSONResponse | None:
        status = await current().campaigns.status(slug)
        if status is None:
            SUBMISSIONS.labels("refused", Reason.UNKNOWN_CAMPAIGN.value).inc()
            return _problem(404, [{"field": "campaign", "reason": Reason.UNKNOWN_CAMPAIGN.value}])
        if status is CampaignStatus.CLOSED:
            SUBMISSIONS.labels("refused", Reason.CAMPAIGN_CLOSED.value).inc()
            return _problem(409, [{"field": "campaign", "reason": Reason.CAMPAIGN_CLOSED.value}])
        return None

    async def produce(submissions: list[Submission]) -> JSONResponse | None:
        st = current()
        try:
            futures = [
                await st.producer.send(
                    st.topics.submitted,
                    value=s.model_dump_json().encode(),
                    key=s.submission_id.bytes,
                )
                for s in submissions
            ]
            await asyncio.wait_for(asyncio.gather(*futures), timeout=15)
        except (KafkaError, TimeoutError) as exc:
            PRODUCE_ERRORS.labels(type(exc).__name__).inc()
            return _problem(
                503,
                [{"field": "(service)", "reason": "broker_unavailable"}],
                **{"Retry-After": "2"},
            )
        return None

    body_schema = Submission.model_json_schema()

    @app.post(
        "/v1/campaigns/{slug}/signatures",
        status_code=202,
        summary="Sign a petition (JSON or HTML form post)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {_JSON: {"schema": body_schema}, _FORM: {"schema": body_schema}},
            }
        },
        responses={404: {}, 409: {}, 413: {}, 415: {}, 422: {}, 503: {}},
    )
    async def sign(slug: str, request: Request) -> Response:
        st = current()
        if (refused := await check_campaign(slug)) is not None:
            return refused
        try:
            body = await read_body(request, st.settings.max_body_bytes)
        except BodyTooLarge:
            return _problem(413, [{"field": "(body)", "reason": "body_too_large"}])
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        outcome: Submission | EdgeRejection
        if content_type == _FORM:
            try:
                pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
            except (UnicodeDecodeError, ValueError):
                return _problem(422, [{"field": "(record)", "reason": Reason.MALFORMED_JSON.value}])
            outcome = from_form(dict(pairs), campaign=slug, source="web")
        elif content_type in (_JSON, ""):
            try:
                parsed = json.loads(body)
            except ValueError:
                return _problem(422, [{"field": "(record)", "reason": Reason.MALFORMED_JSON.value}])
            outcome = from_json_object(parsed, campaign=slug, source="web")
        else:
            return _problem(415, [{"field": "(body)", "reason": "unsupported_media_type"}])
        if isinstance(outcome, EdgeRejection):
            SUBMISSIONS.labels("refused", outcome.errors[0].reason.value).inc()
            return JSONResponse(outcome.as_json(), status_code=422)
        if (failed := await produce([outcome])) is not None:
            return failed
        SUBMISSIONS.labels("accepted", "").inc()
        return JSONResponse({"submission_id": str(outcome.submission_id)}, status_code=202)

    @app.post(
        "/v1/campaigns/{slug}/signatures/batch",
        summary="Partner batch: one JSON submission per line (NDJSON)",
        responses={200: {}, 404: {}, 409: {}, 413: {}, 422: {}, 503: {}},
    )
    async def sign_batch(slug: str, partner: str, request: Request) -> Response:
        st = current()
        source = f"partner:{partner}"
        if (refused := await check_campaign(slug)) is not None:
            return refused
        try:
            body = await read_body(request, st.settings.max_body_bytes)
        except BodyTooLarge:
            return _problem(413, [{"field": "(body)", "reason": "body_too_large"}])
        lines = [line for line in body.split(b"\n") if line.strip()]
        if len(lines) > MAX_BATCH_LINES:
            return _problem(413, [{"field": "(body)", "reason": "too_many_lines"}])
        results: list[dict[str, Any]] = []
        good: list[Submission] = []
        for number, line in enumerate(lines, start=1):
            try:
                parsed = json.loads(line)
            except ValueError:
                outcome: Submission | EdgeRejection = EdgeRejection(
                    [FieldError("(record)", Reason.MALFORMED_JSON)]
                )
            else:
                outcome = from_json_object(parsed, campaign=slug, source=source)
            if isinstance(outcome, EdgeRejection):
                SUBMISSIONS.labels("refused", outcome.errors[0].reason.value).inc()
                results.append({"line": number, "status": "rejected", **outcome.as_json()})
            else:
                good.append(outcome)
                results.append(
                    {
                        "line": number,
                        "status": "accepted",
                        "submission_id": str(outcome.submission_id),
                    }
                )
        if good and (failed := await produce(good)) is not None:
            return failed
        SUBMISSIONS.labels("accepted", "").inc(len(good))
        return JSONResponse(
            {"accepted": len(good), "rejected": len(lines) - len(good), "results": results},
            status_code=200,
        )

    @app.get("/v1/campaigns/{slug}/totals", summary="Running totals of a campaign")
    async def totals(slug: str) -> Response:
        found = await read_totals(current().pool, [slug])
        if not found:
            return _problem(404, [{"field": "campaign", "reason": Reason.UNKNOWN_CAMPAIGN.value}])
        return Response(found[0].model_dump_json(), media_type=_JSON)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready: database reachable and migrated, broker reachable")
    async def readyz() -> Response:
        st = current()
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(2):
                async with st.pool.acquire() as conn:
                    checks["database"] = "ok" if await schema_is_current(conn) else "not_migrated"
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            checks["database"] = "unreachable"
        try:
            async with asyncio.timeout(2):
                partitions = await st.producer.partitions_for(st.topics.submitted)
            checks["broker"] = "ok" if partitions else "topic_missing"
        except (KafkaError, TimeoutError):
            checks["broker"] = "unreachable"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    return app


class CanonicalLogLine:
    """One log line per request: route, status, duration. No client address, no body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            REQUEST_SECONDS.labels(route, scope["method"], str(status)).observe(elapsed)
            if route != "/metrics":
                log.info(
                    "request",
                    method=scope["method"],
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path: str | None = getattr(route, "path", None)
    if path:
        return path
    return "(unmatched)"
