"""Who is signing over HTTP: the public web form, or a partner holding a key.

A partner sends `Authorization: Bearer KEY`; the key alone decides the source
(`partner:NAME`), never anything in the request. No header on the single-signature
endpoint is the public form (`web`); a header with a wrong or revoked key is refused, never
taken for the form. A key in the query string is refused outright: URLs end up in proxy
logs, browser histories and referrers, so such a key must be treated as leaked.

Keys are checked against an in-process copy of the keys in use, reloaded every ~2 s while
keys are being used, so a revocation reaches every API process within seconds and a
request costs no database query. A key is hashed and the hash looked up in a dict: the
check takes the same time whatever the key resembles. `last_used_at` is written at most
once a minute per partner and process, in the background.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import asyncpg

from runtime.logs import get_logger
from runtime.partners import KEY_PREFIX, Partner, keys_in_use, mark_used

log = get_logger("ingest.partner_auth")

FIELD = "authorization"
# Query parameters that carry credentials by common convention.
_KEY_PARAMETERS = frozenset(
    {
        "key", "api_key", "apikey", "api-key", "token", "access_token", "auth",
        "authorization", "bearer", "partner_key", "secret", "password",
    }
)  # fmt: skip
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(frozen=True, slots=True)
class AuthRefusal:
    """Why a request's credential is refused: an HTTP status and a reason code."""

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)


KEY_REQUIRED = AuthRefusal(401, "key_required", {"WWW-Authenticate": 'Bearer realm="signatures"'})
KEY_INVALID = AuthRefusal(
    401, "key_invalid", {"WWW-Authenticate": 'Bearer realm="signatures", error="invalid_token"'}
)
KEY_IN_QUERY = AuthRefusal(400, "key_in_query")
NOT_IN_SCOPE = AuthRefusal(403, "campaign_not_in_scope")
KEYS_UNAVAILABLE = AuthRefusal(503, "keys_unavailable", {"Retry-After": "2"})


def key_in_query(query: bytes) -> bool:
    """Whether the query string carries something that looks like a credential."""
    if not query:
        return False
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name.strip().lower() in _KEY_PARAMETERS or KEY_PREFIX in value:
            return True
        if value[:7].lower() == "bearer ":
            return True
    return False


def bearer_token(authorization: bytes) -> bytes | None:
    """The token of `Bearer TOKEN`; None for any other scheme or an empty token."""
    scheme, _, token = authorization.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token or b" " in token:
        return None
    return token


class PartnerKeys:
    """The keys in use, by hash, reloaded from PostgreSQL when older than `refresh_s`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        refresh_s: float = 2.0,
        touch_every_s: float = 60.0,
        max_stale_s: float = 60.0,
    ) -> None:
        self._pool = pool
        self._refresh_s = refresh_s
        self._touch_every_s = touch_every_s
        self._max_stale_s = max_stale_s
        self._keys: dict[bytes, Partner] | None = None
        self._checked_at = -math.inf  # the last attempt to reload
        self._loaded_at = -math.inf  # the last successful reload
        self._lock = asyncio.Lock()
        self._touched: dict[int, float] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def authorize(
        self, authorization: bytes | None, query: bytes, campaign: str, *, required: bool
    ) -> Partner | AuthRefusal | None:
        """The partner a request signs for, a refusal, or None for the public web form."""
        if key_in_query(query):
            return KEY_IN_QUERY
        if authorization is None:
            return KEY_REQUIRED if required else None
        token = bearer_token(authorization)
        keys = await self._current()
        if keys is None:
            return KEYS_UNAVAILABLE
        # hashed whatever it is, so that a malformed key takes as long as a wrong one
        partner = keys.get(hashlib.sha256(token or authorization).digest())
        if token is None or partner is None:
            return KEY_INVALID
        if not partner.may_sign(campaign):
            return NOT_IN_SCOPE
        self._note_use(partner)
        return partner

    async def _current(self) -> dict[bytes, Partner] | None:
        if time.monotonic() - self._checked_at < self._refresh_s:
            return self._keys
        async with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= self._refresh_s:
                self._checked_at = now
                try:
                    async with asyncio.timeout(self._refresh_s):
                        self._keys = await keys_in_use(self._pool)
                    self._loaded_at = now
                except _DB_ERRORS as exc:
                    log.warning("partner_keys_unavailable", error=type(exc).__name__)
        if time.monotonic() - self._loaded_at > self._max_stale_s:
            return None  # too old to honour revocations: refuse rather than guess
        return self._keys

    def _note_use(self, partner: Partner) -> None:
        now = time.monotonic()
        if now - self._touched.get(partner.id, -math.inf) < self._touch_every_s:
            return
        self._touched[partner.id] = now
        task = asyncio.create_task(self._mark_used(partner.id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _mark_used(self, partner_id: int) -> None:
        try:
            async with asyncio.timeout(10):
                await mark_used(self._pool, partner_id)
        except _DB_ERRORS as exc:
            self._touched.pop(partner_id, None)  # try again on the next use
            log.warning("partner_last_used_not_recorded", error=type(exc).__name__)
