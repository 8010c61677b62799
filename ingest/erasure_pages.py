"""A signer asks to be forgotten: `POST /v1/erasure-requests`, then the link's page.

The request's answer is the same for every well-formed address, signed or not, and the
request does the same work either way (one INSERT, no lookup): the mail worker decides
later whether an email with a link goes out (runtime/erasure_requests.py). The link's
GET changes nothing (mail scanners fetch links); its button's POST erases, once. The
address is never logged; the token is in the URL, so every answer is `no-store`.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from ingest.confirm_pages import HEADERS, wants_json
from ingest.i18n import Texts, texts
from ingest.page import PoolOf, language_of, templates
from ingest.signing import BodyTooLarge, body_reader
from runtime.erasure import person_hash
from runtime.erasure_requests import ForgetOutcome, peek_forget_token, record_request
from runtime.erasure_requests import use_forget_token as use_token
from runtime.logs import get_logger
from runtime.settings import ConfigError, Settings

log = get_logger("ingest.erasure")

MAX_REQUEST_BYTES = 2048
ROUTE = "/forget/{token:path}"
STATUS = {
    ForgetOutcome.FORGOTTEN: 200,
    ForgetOutcome.ALREADY_USED: 200,
    ForgetOutcome.EXPIRED: 410,
    ForgetOutcome.UNKNOWN: 404,
}
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_ANSWER = {"status": "requested"}  # the one answer to every well-formed address


def _fields(body: bytes, content_type: str) -> dict[str, str] | None:
    """`email` (and optional `language`) from a JSON object or a form; None if neither."""
    try:
        if content_type.startswith("application/json"):
            parsed = json.loads(body)
            if not isinstance(parsed, dict):
                return None
            return {k: v for k, v in parsed.items() if isinstance(v, str)}
        return dict(parse_qsl(body.decode("utf-8"), max_num_fields=5))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def add_erasure_pages(app: FastAPI, pool_of: PoolOf, settings: Settings) -> None:
    @app.post(
        "/v1/erasure-requests",
        status_code=202,
        summary="Ask for the signatures made with an email address to be forgotten",
        description="Always the same answer for a well-formed address: an email with a "
        "one-time link goes to the address if it signed anything; only the link erases.",
        responses={422: {}, 503: {}},
    )
    async def request_erasure(request: Request) -> Response:
        try:
            body = await body_reader(request.scope, request.receive)(MAX_REQUEST_BYTES)
        except BodyTooLarge:
            body = b""
        fields = _fields(body, request.headers.get("content-type", ""))
        email = (fields or {}).get("email", "")
        try:
            email_hash = person_hash(settings.require_dedupe_secret(), email)
        except ConfigError:
            return _json({"errors": [{"field": "(service)", "reason": "unavailable"}]}, 503)
        except (ValidationError, PydanticCustomError, ValueError):
            return _json({"errors": [{"field": "email", "reason": "invalid_email"}]}, 422)
        language = (fields or {}).get("language")
        try:
            await record_request(
                pool_of(), email_hash, email.strip(), language[:16] if language else None
            )
        except _UNAVAILABLE as exc:
            log.warning("erasure_request_unavailable", error=type(exc).__name__)
            return _json({"errors": [{"field": "(service)", "reason": "unavailable"}]}, 503)
        return _json(_ANSWER, 202)

    @app.get(ROUTE, response_class=HTMLResponse, summary="The page behind a forget link")
    async def forget_page(token: str, request: Request) -> Response:
        reply = _Reply(request)
        try:
            why = await peek_forget_token(pool_of(), token)
        except _UNAVAILABLE as exc:
            return reply.unavailable(exc)
        return reply.outcome(why) if why is not None else reply.form()

    @app.post(ROUTE, response_class=HTMLResponse, summary="Forget: erase every signature")
    async def forget(token: str, request: Request) -> Response:
        reply = _Reply(request)
        try:
            outcome, erased = await use_token(pool_of(), token)
        except _UNAVAILABLE as exc:
            return reply.unavailable(exc)
        log.info("forget_link", outcome=outcome.value, signatures=erased.signatures)
        return reply.outcome(outcome)


def _json(payload: dict[str, Any], status: int) -> Response:
    return JSONResponse(payload, status, headers=HEADERS)


class _Reply:
    def __init__(self, request: Request) -> None:
        headers = dict(request.scope["headers"])
        self.t: Texts = texts(language_of(request.scope["query_string"], headers))
        self.json = wants_json(headers)

    def form(self) -> Response:
        if self.json:
            return _json({"outcome": None, "usable": True}, 200)
        return self._page(
            200, heading=self.t("forget_title"), paragraphs=[self.t("forget_intro")], form=True
        )

    def outcome(self, outcome: ForgetOutcome) -> Response:
        status = STATUS[outcome]
        if self.json:
            return _json({"outcome": outcome.value}, status)
        return self._page(
            status,
            heading=self.t(f"forget.{outcome.value}.title"),
            paragraphs=[self.t(f"forget.{outcome.value}.body")],
        )

    def unavailable(self, exc: BaseException) -> Response:
        log.warning("forget_unavailable", error=type(exc).__name__)
        if self.json:
            return _json({"errors": [{"field": "(service)", "reason": "unavailable"}]}, 503)
        return self._page(503, heading=self.t("try_later"), paragraphs=[])

    def _page(self, status: int, **values: Any) -> Response:
        body = templates.get_template("forget.html").render(t=self.t, **values)
        return HTMLResponse(body, status, headers=HEADERS)
