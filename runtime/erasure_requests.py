"""A signer's own request to be forgotten: asked for at the API, confirmed by a link.

`POST /v1/erasure-requests` stores the request (`record_request`) the same way whatever
the address: no signature is looked up, so neither the answer nor its time says whether
the address signed. The mail worker (`next_request`) then looks: an address with
signatures gets one email with a one-time link (`{PUBLIC_URL}/forget/{token}`) and its
request keeps only the hash and the link's until the link has expired; for an address
without, nothing is sent and the request is deleted. A person asks
at most once an hour: repeats within it are answered the same and dropped. Only the press
of the link's button (`use_forget_token`) erases, through `runtime.erasure.erase`, in
every campaign. The link's token, like a confirmation link's, is stored only as SHA-256.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

import asyncpg

from runtime.db import Conn
from runtime.erasure import Erasure, erase

_TOKEN = re.compile(r"^forget\.[A-Za-z0-9_-]{43}$")
REPEAT_WINDOW = timedelta(hours=1)  # one request per person in this long; repeats dropped


class ForgetOutcome(StrEnum):
    FORGOTTEN = "forgotten"
    ALREADY_USED = "already_used"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ForgetLetter:
    """One email to send: the address and the link only in memory, never in a repr."""

    to: str = field(repr=False)
    language: str | None
    link: str = field(repr=False)
    expires_at: datetime


def forget_token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


_RECORD = """
INSERT INTO erasure_requests (id, email_hash, email, language)
SELECT $1, $2, $3, $4
WHERE NOT EXISTS (
    SELECT 1 FROM erasure_requests WHERE email_hash = $2 AND requested_at > now() - $5::interval
)
"""


async def record_request(
    conn: Conn | asyncpg.Pool, email_hash: bytes, email: str, language: str | None
) -> None:
    """Store a request (unless the same person asked within the hour): one statement,
    whatever the address, so that nothing about it depends on whether it signed."""
    await conn.execute(_RECORD, uuid.uuid4(), email_hash, email, language, REPEAT_WINDOW)


# Links a day past their expiry (used or not) are of no use any more: their rows go.
_PRUNE = """
DELETE FROM erasure_requests
WHERE handled_at IS NOT NULL AND expires_at < now() - interval '1 day'
"""

_CLAIM = """
SELECT id, email_hash, email, language FROM erasure_requests
WHERE handled_at IS NULL
ORDER BY requested_at
LIMIT 1
FOR UPDATE SKIP LOCKED
"""


async def next_request(
    pool: asyncpg.Pool, *, public_url: str, ttl: timedelta, now: datetime
) -> tuple[bool, ForgetLetter | None]:
    """Handle the oldest request: (whether there was one, the email to send if any).

    The request is marked handled and its address cleared before anything is sent: a
    failed send loses that email (the person may ask again), never leaves an address.
    """
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(_CLAIM)
        if row is None:
            await conn.execute(_PRUNE)
            return False, None
        signed = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM signatures WHERE email_hash = $1)", row["email_hash"]
        )
        if not signed:  # nothing to forget, nothing sent, nothing kept
            await conn.execute("DELETE FROM erasure_requests WHERE id = $1", row["id"])
            return True, None
        token = f"forget.{secrets.token_urlsafe(32)}"
        expires_at = now + ttl
        await conn.execute(
            """UPDATE erasure_requests
               SET handled_at = now(), email = NULL, token_hash = $2, expires_at = $3
               WHERE id = $1""",
            row["id"],
            forget_token_hash(token),
            expires_at,
        )
    return True, ForgetLetter(
        row["email"], row["language"], f"{public_url}/forget/{token}", expires_at
    )


_FIND = """
SELECT id, email_hash, used_at, expires_at < now() AS expired FROM erasure_requests
WHERE token_hash = $1
"""


async def peek_forget_token(conn: Conn | asyncpg.Pool, token: str) -> ForgetOutcome | None:
    """None if the link can be used; else why not. Changes nothing (the GET)."""
    if not _TOKEN.match(token):
        return ForgetOutcome.UNKNOWN
    row = await conn.fetchrow(_FIND, forget_token_hash(token))
    return _unusable(row)


def _unusable(row: asyncpg.Record | None) -> ForgetOutcome | None:
    if row is None:
        return ForgetOutcome.UNKNOWN
    if row["used_at"] is not None:
        return ForgetOutcome.ALREADY_USED
    if row["expired"]:
        return ForgetOutcome.EXPIRED
    return None


async def use_forget_token(pool: asyncpg.Pool, token: str) -> tuple[ForgetOutcome, Erasure]:
    """Forget the link's person in every campaign, once; durable when it returns."""
    if not _TOKEN.match(token):
        return ForgetOutcome.UNKNOWN, Erasure()
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(_FIND + " FOR UPDATE", forget_token_hash(token))
        why = _unusable(row)
        if why is not None or row is None:
            return why or ForgetOutcome.UNKNOWN, Erasure()
        erased = await erase(conn, bytes(row["email_hash"]), None)
        await conn.execute("UPDATE erasure_requests SET used_at = now() WHERE id = $1", row["id"])
    return ForgetOutcome.FORGOTTEN, erased
