"""The API's HTTP server: uvicorn, with the limits a public endpoint needs.

uvicorn's `limit_concurrency` counts open connections, so a tight limit lets a crowd of
clients that trickle their requests a byte at a time take every place, and an honest POST
then gets a 503. So the limit is generous (SIGNATURES_HTTP_MAX_CONNECTIONS, with the open
files to match) and every connection has to keep moving instead:

- headers: uvicorn has no timeout for a request's headers (its keep-alive timer runs only
  between requests), so `GuardedHttpToolsProtocol` closes a connection whose headers have
  not all arrived SIGNATURES_HTTP_HEADER_TIMEOUT_S after it opened or after the request's
  first byte, and answers 431 to headers past MAX_HEADER_BYTES;
- bodies: the app gives a body SIGNATURES_HTTP_BODY_TIMEOUT_S to arrive in full, then
  answers 408 (`ingest.middleware.RequestGuard`);
- a response sent before its request's body was read in full (a 413, a 408, a 404 to a
  POST) ends the connection: the server stops writing at once (so the client reads the
  answer to its end) and drops whatever more arrives for LINGER_S, then closes; the rest
  of that body cannot hold it open, and closing at once would reset the connection under
  the answer before the client read it;
- an idle keep-alive connection closes after SIGNATURES_HTTP_KEEP_ALIVE_S.

A subclass of uvicorn's protocol is the smallest way to get a header deadline: uvicorn
takes a protocol class as its `http` option, and no option of its own does this.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from runtime.logs import get_logger
from runtime.settings import Settings

log = get_logger("ingest.server")

MAX_HEADER_BYTES = 32 * 1024  # our requests carry no cookies: a few hundred bytes is usual
LINGER_S = 2.0
_SPARE_FILES = 1_024  # beyond the connections: the pool, the broker, logs, the metrics port
_TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-length: 0\r\nconnection: close\r\n\r\n"
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size cap on request headers."""

    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._reading_headers = True
        self._body_read = True
        self._lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # the rest of a body nobody will read
        if self._reading_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        if self._reading_headers and self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(_TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        if self._header_deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._header_bytes = 0
        self._body_read = False
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body_read = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._body_read and not self.transport.is_closing():
            self._linger()

    def _linger(self) -> None:
        """Answered before the body was read: stop writing, drop the rest, close soon."""
        self._unset_keepalive_if_required()
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._disarm()
        self._header_deadline = self.loop.call_later(LINGER_S, self.transport.close)

    def _arm(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _timed_out(self) -> None:
        self._header_deadline = None
        self._refuse(_TIMED_OUT)

    def _refuse(self, answer: bytes) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # not inside another answer
            self.transport.write(answer)
        self.transport.close()


def server_config(app: ASGIApp, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    """uvicorn's configuration for the API, for `signatures api` and the tests alike."""
    protocol = type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout_s": settings.http_header_timeout_s},
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=protocol,
        ws="none",
        log_config=None,
        access_log=False,
        # X-Forwarded-For is read by the API itself, and only from SIGNATURES_TRUSTED_PROXIES
        # (ingest/client_address.py); uvicorn's own reading trusts 127.0.0.1 by default
        proxy_headers=False,
        limit_concurrency=settings.http_max_connections,
        timeout_keep_alive=settings.http_keep_alive_s,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )


def raise_open_files_limit(settings: Settings) -> int:
    """Lift this process's soft limit of open files to what the connection limit needs
    (as far as the hard limit allows); warn if that is still short. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = settings.http_max_connections + _SPARE_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "open_files_limit",
            limit=soft,
            wanted=wanted,
            hint="lower SIGNATURES_HTTP_MAX_CONNECTIONS or raise the hard limit (ulimit -Hn)",
        )
    return soft
