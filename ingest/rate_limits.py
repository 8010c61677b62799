"""Rate limits on the signing endpoints: per client address, per partner key, per campaign
(and on forget requests, which send emails: per client address).

A person signs once; a script signs thousands of times. Past a limit the API answers 429
with `Retry-After` and the usual error body, before reading the request's body. Limits are
counted by the `limits` library (sliding window counters, in its notation:
`20/minute;200/hour`), in this process's memory by default, or in Redis
(SIGNATURES_RATE_LIMIT_STORAGE) so that every API process shares them. Each request to a
signing endpoint counts once against its client address (an IPv6 client's /64), once
against its partner key if it carries one, and once against its campaign: a partner's
batch is one request. If the shared storage fails, requests are let through (logged and
counted): a broken limiter must not stop people signing.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import coredis
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest.client_address import ClientAddresses
from ingest.metrics import SUBMISSIONS
from ingest.signing import Answer, problem, send_answer
from runtime.logs import get_logger
from runtime.settings import Settings

log = get_logger("ingest.rate_limits")

RATE_LIMITED = Counter(
    "signatures_rate_limited",
    "Requests to the signing endpoints answered 429, by the limit they passed",
    ["limit"],
)
LIMITER_ERRORS = Counter(
    "signatures_rate_limiter_errors",
    "Requests let through because the rate limits' storage did not answer",
)

_SIGNING = re.compile(r"^/v1/campaigns/([a-z0-9][a-z0-9-]{0,62})/signatures(/batch)?$")
_FORGET_REQUESTS = "/v1/erasure-requests"
_STORAGE_TIMEOUT_S = 0.5
_SWEEP_EVERY_S = 1.0
_READ_AT_MOST = 16_384


class SweptMemoryStorage(MemoryStorage):
    """limits' in-process storage, sweeping out expired keys at most once a second.

    The library starts a sweep over every key it holds after each hit once the previous
    sweep is done: measured here, 700 µs a hit with 20,000 client addresses known, where
    a flood from many addresses is exactly when it must stay cheap. Expiry is still checked
    on every read, so sweeping less often only keeps expired keys a second longer.
    """

    _next_sweep = 0.0

    async def _MemoryStorage__schedule_expiry(self) -> None:  # the library's private name
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY_S
        sweep = super()._MemoryStorage__schedule_expiry  # type: ignore[misc]
        await sweep()


class LimitsStorage(NamedTuple):
    storage: Storage
    close: Callable[[], None]  # lets go of its connections, if it has any


def make_storage(url: str, *, key_prefix: str = "signatures") -> LimitsStorage:
    """The limits' storage for SIGNATURES_RATE_LIMIT_STORAGE: memory:// or a Redis URL."""
    if url.startswith("memory://"):
        return LimitsStorage(SweptMemoryStorage(), lambda: None)
    connections = coredis.ConnectionPool.from_url(
        url, connect_timeout=_STORAGE_TIMEOUT_S, stream_timeout=_STORAGE_TIMEOUT_S
    )
    storage = storage_from_string(
        f"async+{url}",
        wrap_exceptions=True,
        key_prefix=key_prefix,
        connection_pool=connections,  # type: ignore[arg-type]  # passed on to coredis
    )
    assert isinstance(storage, Storage)  # noqa: S101 - an async+ scheme gives an async storage
    return LimitsStorage(storage, connections.disconnect)


def _bearer_key(scope: Scope) -> str | None:
    """A hash of the request's bearer token, the partner key's identity to the limiter."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return hashlib.sha256(token.strip()).hexdigest()[:32]
    return None


class RateLimits:
    """The three limits of the signing endpoints, checked in order: client, key, campaign."""

    def __init__(self, settings: Settings, addresses: ClientAddresses) -> None:
        self.enabled = settings.rate_limits
        self._addresses = addresses
        self._storage = make_storage(settings.rate_limit_storage)
        self._in_memory = settings.rate_limit_storage.startswith("memory://")
        self._limiter = SlidingWindowCounterRateLimiter(self._storage.storage)
        self._items = {
            "client": parse_many(settings.rate_limit_client),
            "key": parse_many(settings.rate_limit_key),
            "campaign": parse_many(settings.rate_limit_campaign),
        }
        self._warned_at = 0.0

    async def check(self, scope: Scope, campaign: str | None) -> Answer | None:
        """None to let the request through, else the 429 to answer. A request for no
        campaign (a forget request) counts against its client and key only."""
        address = self._addresses.address(scope)
        subjects = [
            ("client", self._addresses.limit_subject(address) if address else None),
            ("key", _bearer_key(scope)),
            ("campaign", campaign),
        ]
        try:
            if self._in_memory:  # nothing to wait for: no timer (5 µs a request)
                return await self._hits(subjects)
            async with asyncio.timeout(_STORAGE_TIMEOUT_S):
                return await self._hits(subjects)
        except (StorageError, TimeoutError, OSError) as exc:
            LIMITER_ERRORS.inc()
            if time.monotonic() - self._warned_at > 10:
                self._warned_at = time.monotonic()
                log.warning("rate_limits_unavailable", error=type(exc).__name__)
        return None

    async def _hits(self, subjects: list[tuple[str, str | None]]) -> Answer | None:
        for limit, subject in subjects:
            if subject is None:
                continue
            for item in self._items[limit]:
                if not await self._limiter.hit(item, limit, subject):
                    return await self._refusal(limit, item, subject)
        return None

    def close(self) -> None:
        self._storage.close()

    async def _refusal(self, limit: str, item: RateLimitItem, subject: str) -> Answer:
        stats = await self._limiter.get_window_stats(item, limit, subject)
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        RATE_LIMITED.labels(limit).inc()
        SUBMISSIONS.labels("refused", "rate_limited").inc()
        return problem(429, f"({limit})", "rate_limited", **{"Retry-After": str(wait)})


class RateLimited:
    """In front of the signing endpoints: the rate limits, before anything is read."""

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing_at_shutdown(send))
            return
        match: Any = None
        if self.limits.enabled and scope["type"] == "http" and scope["method"] == "POST":
            if scope["path"] == _FORGET_REQUESTS:  # each sends an email: limited like signing
                if refused := await self.limits.check(scope, None):
                    await send_answer(send, refused)
                    return
            else:
                match = _SIGNING.match(scope["path"])
        if match is not None and (refused := await self.limits.check(scope, match[1])):
            if match[2] is None:  # one signature: read, so a browser's form comes back filled
                await _read_small_body(scope, receive)
            await send_answer(send, refused)
            return
        await self.app(scope, receive, send)

    def _closing_at_shutdown(self, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"].startswith("lifespan.shutdown."):
                self.limits.close()
            await send(message)

        return sending


async def _read_small_body(scope: Scope, receive: Receive) -> None:
    """Reads a body of a signature's size, no more (a refused request gets no buffer)."""
    declared = dict(scope["headers"]).get(b"content-length", b"")
    if not (declared.isdigit() and int(declared) <= _READ_AT_MOST):
        return
    size, more = 0, True
    while more and size <= _READ_AT_MOST:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
