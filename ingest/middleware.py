"""The API's outer layers: trusted hosts, security headers, body deadlines, overload.

- **Hosts.** Starlette builds redirects (a trailing slash, say) from the request's Host
  header, so `GET /campaigns/x/` with `Host: evil.example` would send a browser there.
  Starlette's TrustedHostMiddleware answers 400 to any Host outside
  SIGNATURES_ALLOWED_HOSTS before anything else runs, so no answer can name another host.
- **Headers.** Every HTML answer carries the page's security headers (`SECURITY_HEADERS`)
  and `X-Frame-Options: DENY` unless its CSP lets it be framed (the widget); every answer
  carries `nosniff`, and HSTS when the public URL is https.
- **Bodies.** A request body has SIGNATURES_HTTP_BODY_TIMEOUT_S to arrive in full, or
  the answer is 408 and the connection closes: a client trickling a body a byte at a time
  holds a place for seconds, not hours.
- **Overload.** When the database pool has no connection to lend within its acquire
  timeout, or the database cannot be reached, the answer is 503 with Retry-After and one
  warning line, not a 500 and a traceback.

The signing fast path and the browser-form layer sit outside the framework, so these are
plain ASGI middleware around the whole app; `add_error_answers` gives the framework's
own routes the same answers (its error middleware would otherwise answer 500 first).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.campaign_cache import UNAVAILABLE
from ingest.page import SECURITY_HEADERS
from runtime.logs import get_logger
from runtime.settings import Settings

log = get_logger("ingest.middleware")

RETRY_AFTER_S = 2
HSTS = "max-age=31536000"
_FRAME_ANCESTORS = b"frame-ancestors"
_NOT_FRAMED = b"frame-ancestors 'none'"


class BodyTimeout(Exception):
    """A request body did not arrive in full within SIGNATURES_HTTP_BODY_TIMEOUT_S."""


def harden(app: ASGIApp, settings: Settings) -> ASGIApp:
    """The app behind every layer of this module, outermost first."""
    guarded = RequestGuard(app, settings.http_body_timeout_s)
    headers = SecurityHeaders(guarded, hsts=(settings.public_url or "").startswith("https://"))
    return TrustedHostMiddleware(headers, settings.trusted_hosts(), www_redirect=False)


def add_error_answers(app: FastAPI) -> None:
    """The framework's routes answer 408 and 503 as the layers here do."""

    async def body_timeout(_request: Request, _exc: Exception) -> Response:
        status, body, headers = _body_timeout()
        return Response(body, status, dict(headers))

    async def unavailable(request: Request, exc: Exception) -> Response:
        status, body, headers = _unavailable(request.scope, exc)
        return Response(body, status, dict(headers))

    app.add_exception_handler(BodyTimeout, body_timeout)
    for error in UNAVAILABLE:
        app.add_exception_handler(error, unavailable)


class RequestGuard:
    """The body deadline (408) and overload (503) for every HTTP request."""

    def __init__(self, app: ASGIApp, body_timeout_s: float) -> None:
        self.app = app
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # the rest is waiting for a disconnect (a stream): no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout from None
            body_done = message["type"] != "http.request" or not message.get("more_body")
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except BodyTimeout:
            if started:
                raise
            await _send(send, *_body_timeout())
        except UNAVAILABLE as exc:
            if started:
                raise
            await _send(send, *_unavailable(scope, exc))


def _body_timeout() -> tuple[int, bytes, list[tuple[str, str]]]:
    body = orjson.dumps({"errors": [{"field": "(body)", "reason": "body_timeout"}]})
    return 408, body, [("content-type", "application/json"), ("connection", "close")]


def _unavailable(scope: Scope, exc: BaseException) -> tuple[int, bytes, list[tuple[str, str]]]:
    route = scope.get("route_template") or getattr(scope.get("route"), "path", "(unmatched)")
    log.warning("service_unavailable", error=type(exc).__name__, route=route)
    body = orjson.dumps({"errors": [{"field": "(service)", "reason": "unavailable"}]})
    headers = [("content-type", "application/json"), ("retry-after", str(RETRY_AFTER_S))]
    return 503, body, headers


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    raw = [(k.encode(), v.encode()) for k, v in headers]
    raw += [(b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Adds the security headers an answer lacks: all of them to HTML, nosniff and HSTS to
    everything. Headers a route set itself are kept."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.always: list[tuple[bytes, bytes]] = [(b"x-content-type-options", b"nosniff")]
        if hsts:
            self.always.append((b"strict-transport-security", HSTS.encode()))
        self.html = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": self._complete(list(message.get("headers", [])))}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _complete(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        present: dict[bytes, Any] = {name.lower(): value for name, value in headers}
        wanted = list(self.always)
        if present.get(b"content-type", b"").startswith(b"text/html"):
            wanted += self.html
            csp: bytes = present.get(b"content-security-policy", b"")
            if _FRAME_ANCESTORS not in csp or _NOT_FRAMED in csp:
                wanted.append((b"x-frame-options", b"DENY"))
        return headers + [(name, value) for name, value in wanted if name not in present]
