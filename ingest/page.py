"""The petition page, its embeddable counter, and live and cacheable totals.

Pages are rendered on the server (Jinja2, every value escaped) so they work without
JavaScript; `static/live.js` makes the count live over the totals stream. A strict
Content-Security-Policy allows only this origin's script and stylesheet, no inline code.
The signing form posts to the ingest endpoint; a browser (Accept: text/html) gets a page
back instead of JSON: the thank-you page, identical whether or not the person had signed
before, or the form again with its errors. Where a signature counts only once confirmed by
email, the form and the thank-you page say so (to everyone alike).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.campaign_cache import CampaignCache
from ingest.form_guard import HONEYPOT_FIELD, TOKEN_FIELD
from ingest.i18n import Texts, choose_language, texts
from ingest.live import CappedStream, Frame, TotalsHub, last_event_id, updates
from ingest.signing import FORM_TYPE, JSON_TYPE, Answer, media_type, problem
from schemas.campaign import Campaign, CampaignStatus, Confirmation
from schemas.countries import ISO_3166_ALPHA2
from schemas.events import CampaignTotals
from schemas.reasons import Reason

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
WIDGET_CSP = PAGE_CSP.replace("frame-ancestors 'none'", "frame-ancestors *")
# On every HTML answer (ingest.middleware adds them where a route did not, and
# X-Frame-Options: DENY wherever the CSP does not allow framing).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=(), "
    "browsing-topics=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# On every answer that shows a signer's name or echoes what they typed.
NO_STORE = {"Cache-Control": "no-store"}
TOTALS_MAX_AGE_S = 2
SIGN_PATH = re.compile(r"^/v1/campaigns/([a-z0-9][a-z0-9-]{0,62})/signatures$")
FORM_FIELDS = frozenset({"first_name", "last_name", "email", "country", "postcode"})

templates = Environment(
    loader=PackageLoader("ingest", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)

PoolOf = Callable[[], asyncpg.Pool]
CampaignsOf = Callable[[], CampaignCache]


def wants_html(headers: dict[bytes, bytes]) -> bool:
    """A browser navigating (a form post), as opposed to a script asking for JSON."""
    return b"text/html" in headers.get(b"accept", b"")


def language_of(query_string: bytes, headers: dict[bytes, bytes]) -> str:
    requested = dict(parse_qsl(query_string.decode("latin-1"))).get("lang")
    return choose_language(requested, headers.get(b"accept-language", b"").decode("latin-1"))


async def _current(hub: TotalsHub, campaigns: CampaignCache, slug: str) -> Frame | None:
    """The published totals (what everyone sees), or the database's before the first; None
    for a campaign that does not exist (known from memory: no query)."""
    published = hub.latest_frame(slug)
    if published is not None:
        return published
    if await campaigns.get(slug) is None:
        return None
    stored = await campaigns.stored_totals(slug)
    return Frame.of(stored) if stored is not None else None


async def _totals(hub: TotalsHub, campaigns: CampaignCache, slug: str) -> CampaignTotals | None:
    frame = await _current(hub, campaigns, slug)
    return frame.totals if frame is not None else None


def _html(body: str, status: int = 200, *, csp: str = PAGE_CSP) -> HTMLResponse:
    return HTMLResponse(body, status, headers={"Content-Security-Policy": csp, **SECURITY_HEADERS})


def _too_many_streams() -> Response:
    answer = problem(503, "(service)", "too_many_streams")
    return Response(answer.body(), 503, {"Retry-After": "5"}, media_type=JSON_TYPE)


def render_page(
    t: Texts,
    campaign: Campaign,
    totals: CampaignTotals | None,
    updates_: list[Any],
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    message: str | None = None,
    form_token: str = "",
) -> str:
    by_country = sorted((totals.by_country if totals else {}).items(), key=lambda kv: -kv[1])
    return templates.get_template("page.html").render(
        t=t,
        campaign=campaign,
        total=totals.total if totals else 0,
        version=totals.version if totals else -1,
        by_country=by_country[:10],
        updates=updates_,
        closed=campaign.status is CampaignStatus.CLOSED,
        countries=t.countries(ISO_3166_ALPHA2),
        default_country="IT" if t.language == "it" else "",
        values=values or {},
        errors=errors or {},
        fields=FORM_FIELDS | {"consent"},
        message=message,
        confirm_by_email=campaign.confirmation is Confirmation.REQUIRED,
        form_token=form_token,
        honeypot=HONEYPOT_FIELD,
        token_field=TOKEN_FIELD,
    )


def _no_token(_campaign: str) -> str:
    return ""


def add_pages(
    app: FastAPI,
    campaigns_of: CampaignsOf,
    hub: Callable[[], TotalsHub],
    form_token: Callable[[str], str] = _no_token,
) -> None:
    """The page, the widget, the static files and the totals (cacheable and streamed);
    `form_token` signs the time the page's form is rendered (ingest/form_guard.py)."""
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")

    async def shown(
        slug: str, request: Request
    ) -> tuple[Texts, Campaign | None, CampaignTotals | None]:
        """The language asked for, the campaign (None if unknown) and its totals."""
        t = texts(language_of(request.scope["query_string"], dict(request.scope["headers"])))
        campaign = await campaigns_of().get(slug)
        totals = await _totals(hub(), campaigns_of(), slug) if campaign else None
        return t, campaign, totals

    @app.get("/campaigns/{slug}", response_class=HTMLResponse, summary="The petition page")
    async def page(slug: str, request: Request) -> Response:
        t, campaign, totals = await shown(slug, request)
        if campaign is None:
            return _html(_message(t, t("not_found")), 404)
        return _html(
            render_page(
                t, campaign, totals, await campaigns_of().updates(slug),
                form_token=form_token(slug),
            )
        )  # fmt: skip

    @app.get("/campaigns/{slug}/widget", response_class=HTMLResponse, summary="Embeddable counter")
    async def widget(slug: str, request: Request) -> Response:
        t, campaign, totals = await shown(slug, request)
        if campaign is None:
            return _html(_message(t, t("not_found")), 404, csp=WIDGET_CSP)
        body = templates.get_template("widget.html").render(
            t=t, campaign=campaign, total=totals.total if totals else 0,
            version=totals.version if totals else -1,
        )  # fmt: skip
        return _html(body, csp=WIDGET_CSP)

    @app.get("/v1/campaigns/{slug}/totals", summary="Running totals of a campaign")
    async def totals(slug: str, request: Request) -> Response:
        found = await _current(hub(), campaigns_of(), slug)
        if found is None:
            return _unknown_campaign()
        tag = f'"{found.totals.version}"'
        headers = {"ETag": tag, "Cache-Control": f"public, max-age={TOTALS_MAX_AGE_S}"}
        if tag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(found.json, media_type=JSON_TYPE, headers=headers)

    @app.get("/v1/campaigns/{slug}/totals/stream", summary="Live totals (server-sent events)")
    async def stream(slug: str, request: Request) -> Response:
        first = await _current(hub(), campaigns_of(), slug)
        if first is None:
            return _unknown_campaign()
        if not hub().reserve():
            return _too_many_streams()
        last_seen = last_event_id(request.headers.get("last-event-id", ""))

        async def events() -> Any:
            async for frame in updates(hub(), slug, first, last_seen):
                yield frame.event  # the same bytes for every client

        return CappedStream(hub().release, events(), ping=15, send_timeout=10, headers=NO_STORE)


def _unknown_campaign() -> Response:
    answer = problem(404, "campaign", Reason.UNKNOWN_CAMPAIGN.value)
    return Response(answer.body(), 404, media_type=JSON_TYPE)


def _message(t: Texts, message: str, campaign: Campaign | None = None) -> str:
    return templates.get_template("message.html").render(t=t, message=message, campaign=campaign)


class BrowserForms:
    """In front of the signing endpoint: a browser's form post gets a page, not JSON.

    The endpoint itself is untouched: this records the request body as the endpoint
    reads it and its JSON answer as it sends it, then answers with HTML instead.
    """

    def __init__(
        self,
        app: ASGIApp,
        campaigns_of: CampaignsOf,
        hub: Callable[[], TotalsHub],
        form_token: Callable[[str], str] = _no_token,
    ) -> None:
        self.app = app
        self.campaigns_of = campaigns_of
        self.hub = hub
        self.form_token = form_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", ()))
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and (match := SIGN_PATH.match(scope["path"]))
            and media_type(headers.get(b"content-type", b"").decode("latin-1")) == FORM_TYPE
            and wants_html(headers)
        ):
            await self.app(scope, receive, send)
            return
        body: list[bytes] = []
        sent: dict[str, Any] = {"status": 500, "headers": [], "body": b""}

        async def recording_receive() -> Message:
            message = await receive()
            body.append(message.get("body", b""))
            return message

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                sent["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                sent["body"] += message.get("body", b"")

        await self.app(scope, recording_receive, capture)
        try:
            payload = json.loads(sent["body"] or b"{}")
        except ValueError:
            payload = {}
        kept = {"retry-after"}
        answer = Answer(
            sent["status"],
            payload if isinstance(payload, dict) else {},
            {k.decode(): v.decode() for k, v in sent["headers"] if k.decode() in kept},
        )
        await browser_answer(
            send, campaigns=self.campaigns_of(), hub=self.hub(), slug=match[1],
            language=language_of(scope.get("query_string", b""), headers),
            answer=answer, body=b"".join(body), form_token=self.form_token,
        )  # fmt: skip


async def browser_answer(
    send: Send,
    *,
    campaigns: CampaignCache,
    hub: TotalsHub,
    slug: str,
    language: str,
    answer: Answer,
    body: bytes,
    form_token: Callable[[str], str] = _no_token,
) -> None:
    """The HTML answer to a form post from a browser, for the ingest endpoint's answer.
    Never stored by any cache: it shows the signer's name, or what they typed. The form
    shown again keeps the time it was first rendered (its token), so a person who corrects
    a field is not taken for a script that posted too fast."""
    try:
        values = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50))
    except (UnicodeDecodeError, ValueError):
        values = {}
    t = texts(values.get("language") or language)
    campaign = await campaigns.get(slug)
    if campaign is None:
        html, status = _message(t, t("not_found")), 404
    elif answer.status == 202:
        name = values.get("first_name", "").strip()
        html = templates.get_template("thanks.html").render(
            t=t, campaign=campaign, name=name,
            confirm_by_email=campaign.confirmation is Confirmation.REQUIRED,
        )  # fmt: skip
        status = 202
    elif answer.status in (409, 422, 429, 503):
        errors = {
            e["field"]: e["reason"]
            for e in answer.payload.get("errors", [])
            if e["field"] in FORM_FIELDS or e["field"] == "consent"
        }
        message = t("unavailable") if answer.status == 503 else None
        if answer.status == 429:
            message = t("rate_limited")
        if answer.status == 422 and not errors:
            message = t.reason("other")
        kept = {k: v for k, v in values.items() if k in FORM_FIELDS or k == "consent"}
        totals = await _totals(hub, campaigns, slug)
        html = render_page(
            t, campaign, totals, await campaigns.updates(slug),
            values=kept, errors=errors, message=message,
            form_token=values.get(TOKEN_FIELD) or form_token(slug),
        )  # fmt: skip
        status = answer.status
    else:
        html, status = _message(t, t("too_large"), campaign), answer.status
    encoded = html.encode()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(encoded)).encode()),
        (b"content-security-policy", PAGE_CSP.encode()),
        *(
            (k.lower().encode(), v.encode())
            for k, v in {**SECURITY_HEADERS, **NO_STORE, **answer.headers}.items()
        ),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": encoded})
