"""The ingest API (one ASGI app): signatures in, totals out, health (metrics: own port).

202 means the broker has acknowledged the submission: from then on it is never lost. A
duplicate signer gets exactly the answer a first-time signer gets; dedupe happens later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.confirm_pages import add_confirm_pages
from ingest.docs import OPENAPI_URL, add_docs
from ingest.edge import EdgeRejection
from ingest.edge_facts import client_addresses, form_guard
from ingest.erasure_pages import add_erasure_pages
from ingest.live import TotalsHub
from ingest.metrics import REQUEST_SECONDS, SUBMISSIONS
from ingest.middleware import add_error_answers, harden
from ingest.page import BrowserForms, add_pages
from ingest.rate_limits import RateLimited, RateLimits
from ingest.signing import (
    FORM_TYPE,
    JSON_TYPE,
    Answer,
    BodyTooLarge,
    Signer,
    SigningFastPath,
    body_reader,
    media_type,
    parse_json,
    problem,
)
from runtime.db import create_pool, schema_is_current
from runtime.kafka import make_producer
from runtime.logs import get_logger
from runtime.settings import Settings
from schemas.submission import Submission

log = get_logger("ingest.api")

MAX_BATCH_LINES = 10_000


def _problem(status: int, field_name: str, reason: str) -> Response:
    return _respond(problem(status, field_name, reason))


def _respond(answer: Answer) -> Response:
    return Response(answer.body(), answer.status, answer.headers or None, media_type=JSON_TYPE)


def _authorization(request: Request) -> bytes | None:
    return dict(request.scope["headers"]).get(b"authorization")


def create_app(settings: Settings) -> ASGIApp:
    """The API: the signing fast path and the canonical log line around the framework's app."""
    state: Signer | None = None
    hub = TotalsHub(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        nonlocal state
        pool = await create_pool(
            settings.database_url_for("api"),
            max_size=4,
            acquire_timeout=settings.db_acquire_timeout_s,
        )
        producer = make_producer(settings)
        try:
            await producer.start()
            state = Signer(settings, pool, producer)
            hub.start()
            yield
        finally:
            await hub.stop()
            await producer.stop()
            await pool.close()

    def current() -> Signer:
        assert state is not None  # noqa: S101 - set by the lifespan before any request
        return state

    app = FastAPI(
        title="Signatures ingest API",
        version="1",
        lifespan=lifespan,
        description="Petition signatures in; exact, live totals out.",
        docs_url=None,  # ingest.docs serves them, only with SIGNATURES_DOCS=on
        redoc_url=None,
        openapi_url=OPENAPI_URL if settings.docs else None,
    )
    if settings.docs:
        add_docs(app)
    add_error_answers(app)

    body_schema = Submission.model_json_schema()

    @app.post(
        "/v1/campaigns/{slug}/signatures",
        status_code=202,
        summary="Sign a petition (JSON or HTML form post)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {JSON_TYPE: {"schema": body_schema}, FORM_TYPE: {"schema": body_schema}},
            }
        },
        description="No `Authorization` header: the public web form. A partner sends "
        "`Authorization: Bearer KEY`: the source is then the key's partner.",
        responses={c: {} for c in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)},
    )
    async def sign(slug: str, request: Request) -> Response:
        # Served by SigningFastPath; this route documents it and answers the same way.
        signer = current()
        source = await signer.source(
            slug, _authorization(request), request.scope["query_string"], required=False
        )
        if isinstance(source, Answer):
            return _respond(source)
        content_type = media_type(request.headers.get("content-type", ""))
        return _respond(
            await signer.sign(
                slug,
                content_type,
                body_reader(request.scope, request.receive),
                source,
                request.scope,
            )
        )

    @app.post(
        "/v1/campaigns/{slug}/signatures/batch",
        summary="Partner batch: one JSON submission per line (NDJSON)",
        description="Needs `Authorization: Bearer KEY` (`signatures partner create`); the "
        "source is the key's partner, whatever the request says.",
        responses={c: {} for c in (200, 400, 401, 403, 404, 409, 413, 422, 429, 503)},
    )
    async def sign_batch(slug: str, request: Request) -> Response:
        signer = current()
        source = await signer.source(
            slug, _authorization(request), request.scope["query_string"], required=True
        )
        if isinstance(source, Answer):
            return _respond(source)
        if (refused := await signer.refusal(slug)) is not None:
            return _respond(refused)
        try:
            read = body_reader(request.scope, request.receive)
            body = await read(signer.settings.max_batch_bytes)
        except BodyTooLarge:
            return _problem(413, "(body)", "body_too_large")
        lines = [line for line in body.split(b"\n") if line.strip()]
        if len(lines) > MAX_BATCH_LINES:
            return _problem(413, "(body)", "too_many_lines")
        results: list[dict[str, Any]] = []
        good: list[Submission] = []
        for number, line in enumerate(lines, start=1):
            outcome = parse_json(line, campaign=slug, source=source)
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
        if good and (failed := await signer.produce(good)) is not None:
            return _respond(failed)
        SUBMISSIONS.labels("accepted", "").inc(len(good))
        return JSONResponse(
            {"accepted": len(good), "rejected": len(lines) - len(good), "results": results},
            status_code=200,
        )

    add_pages(app, lambda: current().campaigns, lambda: hub, form_guard(settings).token)
    add_confirm_pages(app, lambda: current().pool)
    add_erasure_pages(app, lambda: current().pool, settings)

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
        try:  # a fresh metadata request: cached metadata would hide an outage
            async with asyncio.timeout(2):
                reached = await st.producer.client.force_metadata_update()
            partitions = st.producer.client.cluster.partitions_for_topic(st.topics.submitted)
            checks["broker"] = (
                "unreachable" if not reached else "ok" if partitions else "topic_missing"
            )
        except (KafkaError, TimeoutError):
            checks["broker"] = "unreachable"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    signing = RateLimited(
        SigningFastPath(app, current), RateLimits(settings, client_addresses(settings))
    )
    forms = BrowserForms(
        signing, lambda: current().campaigns, lambda: hub, form_guard(settings).token
    )
    return CanonicalLogLine(harden(forms, settings))


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
    if "route_template" in scope:
        template: str = scope["route_template"]
        return template
    route = scope.get("route")
    path: str | None = getattr(route, "path", None)
    if path:
        return path
    return "(unmatched)"
