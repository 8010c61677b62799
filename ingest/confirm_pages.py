"""The pages behind a confirmation link: `GET /confirm/{token}` and its buttons' POST.

Mail scanners fetch the links in an email before anyone clicks them, so the GET changes
nothing: it shows what the link is for (the campaign's title and target, never the
signer's name or address) and two buttons. Only their POST confirms the signature or
removes it ("this wasn't me"), and it answers once that change has committed, so the page
a person sees is true. Pressing again, or another link of the same signature, counts
nothing more.

The token is in the URL: every answer is `no-store` and sends no referrer, and the token
is never logged (the request line names the route, not the path). Anything that is not a
token of a campaign, down to garbage, gets the same "not valid" page with 404. A script
asking for JSON gets `{"outcome": ...}` with the same status instead of a page.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import asyncpg
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from ingest.i18n import Texts, texts
from ingest.page import PAGE_CSP, SECURITY_HEADERS, PoolOf, language_of, templates
from ingest.signing import BodyTooLarge, body_reader
from runtime.campaigns import get_campaign
from runtime.confirmation import Action, Outcome, peek, use_token
from runtime.logs import get_logger
from schemas.campaign import Campaign

log = get_logger("ingest.confirm")

ROUTE = "/confirm/{token:path}"  # `path`: a token with slashes still reaches the page
MAX_FORM_BYTES = 1024  # the form has one field

STATUS = {
    Outcome.CONFIRMED: 200,
    Outcome.ALREADY_CONFIRMED: 200,
    Outcome.REMOVED: 200,
    Outcome.ALREADY_USED: 200,
    Outcome.EXPIRED: 410,
    Outcome.CLOSED: 409,
    Outcome.UNKNOWN: 404,
}

# Where each outcome's page points next: back to the petition, or to its form.
_NEXT = {
    Outcome.REMOVED: ("sign_yourself", "#sign-heading"),
    Outcome.EXPIRED: ("sign_again", "#sign-heading"),
}

_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

HEADERS = {"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store", **SECURITY_HEADERS}


def add_confirm_pages(app: FastAPI, pool_of: PoolOf) -> None:
    """`GET /confirm/{token}` (shows, changes nothing) and `POST` (confirms or removes)."""

    @app.get(
        ROUTE,
        response_class=HTMLResponse,
        summary="The page behind a confirmation link (changes nothing)",
        responses={404: {}, 409: {}, 410: {}, 503: {}},
    )
    async def confirm_page(token: str, request: Request) -> Response:
        reply = _Reply(request)
        try:
            async with pool_of().acquire() as conn:
                view = await peek(conn, token)
                campaign = await get_campaign(conn, view.campaign) if view else None
        except _UNAVAILABLE as exc:
            return reply.unavailable(exc)
        if view is None or campaign is None:
            return reply.outcome(Outcome.UNKNOWN, None)
        if view.outcome is not None:
            return reply.outcome(view.outcome, campaign)
        return reply.form(campaign)

    @app.post(
        ROUTE,
        response_class=HTMLResponse,
        summary="Confirm the signature (action=confirm) or remove it (action=remove)",
        responses={400: {}, 404: {}, 409: {}, 410: {}, 503: {}},
    )
    async def use_link(token: str, request: Request) -> Response:
        reply = _Reply(request)
        try:
            body = await body_reader(request.scope, request.receive)(MAX_FORM_BYTES)
        except BodyTooLarge:
            body = b""
        action = action_of(body)
        if action is None:
            return reply.bad_action()
        try:
            outcome, slug = await use_token(pool_of(), token, action)
        except _UNAVAILABLE as exc:
            return reply.unavailable(exc)
        log.info("confirmation_link", action=action.value, outcome=outcome.value, campaign=slug)
        campaign = None
        if slug is not None:
            try:  # already committed: a failure here only loses the link back
                campaign = await get_campaign(pool_of(), slug)
            except _UNAVAILABLE:
                campaign = None
        return reply.outcome(outcome, campaign)


def action_of(body: bytes) -> Action | None:
    """The one `action` the form sent, or None if missing, unknown or given twice."""
    try:
        fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return None
    values = {value for name, value in fields if name == "action"}
    if len(values) != 1:
        return None
    try:
        return Action(values.pop())
    except ValueError:
        return None


def wants_json(headers: dict[bytes, bytes]) -> bool:
    """A script asking for JSON; a browser's Accept always names text/html."""
    accept = headers.get(b"accept", b"")
    return b"application/json" in accept and b"text/html" not in accept


class _Reply:
    """One request's answers, as a page in its language or as JSON, all with the headers."""

    def __init__(self, request: Request) -> None:
        headers = dict(request.scope["headers"])
        self.t: Texts = texts(language_of(request.scope["query_string"], headers))
        self.json = wants_json(headers)

    def form(self, campaign: Campaign) -> Response:
        if self.json:
            return self._json({"outcome": None, "usable": True}, 200)
        return self._page(
            200,
            campaign=campaign,
            heading=self.t("confirm_title"),
            paragraphs=[self.t("confirm_intro", title=campaign.title)],
            form=True,
        )

    def outcome(self, outcome: Outcome, campaign: Campaign | None) -> Response:
        status = STATUS[outcome]
        if self.json:
            return self._json({"outcome": outcome.value}, status)
        label, anchor = _NEXT.get(outcome, ("back", ""))
        title = campaign.title if campaign else ""
        return self._page(
            status,
            campaign=campaign,
            heading=self.t(f"outcome.{outcome.value}.title"),
            paragraphs=[self.t(f"outcome.{outcome.value}.body", title=title)],
            next_label=self.t(label),
            next_anchor=anchor,
        )

    def bad_action(self) -> Response:
        if self.json:
            return self._json({"errors": [{"field": "action", "reason": "invalid_field"}]}, 400)
        return self._page(400, heading=self.t("choose_action"))

    def unavailable(self, exc: BaseException) -> Response:
        log.warning("confirmation_unavailable", error=type(exc).__name__)
        if self.json:
            return self._json({"errors": [{"field": "(service)", "reason": "unavailable"}]}, 503)
        return self._page(503, heading=self.t("try_later"))

    def _json(self, payload: dict[str, Any], status: int) -> Response:
        return JSONResponse(payload, status, headers=HEADERS)

    def _page(self, status: int, **values: Any) -> Response:
        values.setdefault("campaign", None)
        body = templates.get_template("confirm.html").render(t=self.t, **values)
        return HTMLResponse(body, status, headers=HEADERS)
