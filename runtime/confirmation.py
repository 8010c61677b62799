"""Confirmation links: tokens made for an email, and what using one does.

A token is `{campaign}.{32 random bytes, URL-safe}`; only its SHA-256 is stored, with the
signature and campaign it is bound to and when it expires. Using one (the POST behind the
page's button) confirms the signature through the one state-change path, or forgets it
("this wasn't me") through the one erasure path (runtime/erasure.py), in one transaction,
and spends (or, forgetting, deletes) every token of that signature. The answer comes only
once that transaction has committed.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.erasure import erase, lock_for_erasure
from runtime.signature_states import change_state
from schemas.campaign import SignatureState

_TOKEN = re.compile(r"^([a-z0-9][a-z0-9-]{0,62})\.[A-Za-z0-9_-]{43}$")


class Action(StrEnum):
    CONFIRM = "confirm"
    REMOVE = "remove"  # "this wasn't me"


class Outcome(StrEnum):
    CONFIRMED = "confirmed"  # counted now
    ALREADY_CONFIRMED = "already_confirmed"  # confirmed before: counted once
    REMOVED = "removed"  # removed now
    ALREADY_USED = "already_used"  # used before, and the signature is not confirmed
    EXPIRED = "expired"
    CLOSED = "closed"  # the campaign no longer collects signatures
    UNKNOWN = "unknown"  # no such token (or malformed, or of another campaign)


@dataclass(frozen=True, slots=True)
class TokenView:
    """What the page behind a link may show: never a name or an address."""

    campaign: str
    usable: bool
    outcome: Outcome | None  # why it is not usable


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


def campaign_of(token: str) -> str | None:
    """The campaign a well-formed token names, or None for anything else."""
    match = _TOKEN.match(token)
    return match[1] if match else None


async def new_token(
    conn: Conn, submission_id: UUID, campaign: str, *, now: datetime, ttl: timedelta
) -> str:
    """Make and store a token for one signature's email; the caller commits before sending."""
    token = f"{campaign}.{secrets.token_urlsafe(32)}"
    await conn.execute(
        """INSERT INTO confirmation_tokens (token_hash, submission_id, campaign, expires_at)
           VALUES ($1, $2, $3, $4)""",
        token_hash(token),
        submission_id,
        campaign,
        now + ttl,
    )
    return token


_FIND = """
SELECT t.submission_id, t.campaign, t.used_at, t.expires_at < now() AS expired,
       s.state, c.status
FROM confirmation_tokens t
JOIN signatures s ON s.submission_id = t.submission_id AND s.campaign = t.campaign
JOIN campaigns c ON c.slug = t.campaign
WHERE t.token_hash = $1 AND t.campaign = $2
"""


# Every use of any token of one signature waits here for the one before it, signature
# first and its tokens after: a press reads the state the previous one committed (a lock
# taken by the join itself would re-read only the token row, not the signature's state),
# and two links of one signature pressed at once cannot deadlock on each other's tokens.
_LOCK_SIGNATURE = """
SELECT s.submission_id FROM signatures s
WHERE s.campaign = $2 AND s.submission_id = (
    SELECT submission_id FROM confirmation_tokens WHERE token_hash = $1 AND campaign = $2
)
FOR UPDATE OF s
"""


def _unusable(row: asyncpg.Record | None) -> Outcome | None:
    if row is None:
        return Outcome.UNKNOWN
    state = SignatureState(row["state"])
    if row["used_at"] is not None or state in (SignatureState.CONFIRMED, SignatureState.REMOVED):
        return Outcome.ALREADY_CONFIRMED if state.counted else Outcome.ALREADY_USED
    if row["expired"]:
        return Outcome.EXPIRED
    if row["status"] != "open":
        return Outcome.CLOSED
    return None


async def peek(conn: Conn, token: str) -> TokenView | None:
    """For the page behind the link (GET): changes nothing. None if unknown."""
    campaign = campaign_of(token)
    if campaign is None:
        return None
    row = await conn.fetchrow(_FIND, token_hash(token), campaign)
    if row is None:
        return None
    why = _unusable(row)
    return TokenView(campaign, why is None, why)


async def use_token(pool: asyncpg.Pool, token: str, action: Action) -> tuple[Outcome, str | None]:
    """Confirm or remove the token's signature; the outcome and the token's campaign.

    Durable when it returns. Pressing the button again, or any other link of the same
    signature afterwards, changes nothing: the signature counts once.
    """
    campaign = campaign_of(token)
    if campaign is None:
        return Outcome.UNKNOWN, None
    async with pool.acquire() as conn, conn.transaction():
        if action is Action.REMOVE:
            await lock_for_erasure(conn)  # before any row: the erasure's lock order
        if await conn.fetchval(_LOCK_SIGNATURE, token_hash(token), campaign) is None:
            return Outcome.UNKNOWN, None
        # A new statement, so it reads what the holder of the lock before us committed.
        row = await conn.fetchrow(_FIND + " FOR UPDATE OF t", token_hash(token), campaign)
        why = _unusable(row)
        if why is not None or row is None:
            return why or Outcome.UNKNOWN, campaign if row else None
        submission_id = row["submission_id"]
        if action is Action.CONFIRM:
            change = await change_state(
                conn,
                [submission_id],
                SignatureState.CONFIRMED,
                allowed_from={SignatureState.PENDING, SignatureState.UNDELIVERABLE},
            )
            outcome = Outcome.CONFIRMED if change.changed else Outcome.ALREADY_USED
        else:
            # "this wasn't me": the owner of the address did not sign this campaign. Its
            # signature goes the way of every erasure (runtime/erasure.py): deleted with
            # its tokens and emails, and suppressed for this campaign, so no replay brings
            # it back; the owner may still sign for themselves.
            # through a function of the owner: the API may not read email hashes
            email_hash = await conn.fetchval(
                "SELECT confirmation_email_hash($1, $2)", token_hash(token), campaign
            )
            erased = await erase(conn, email_hash, campaign) if email_hash else None
            outcome = Outcome.REMOVED if erased and erased.signatures else Outcome.ALREADY_USED
        await conn.execute(
            """UPDATE confirmation_tokens SET used_at = now()
               WHERE submission_id = $1 AND used_at IS NULL""",
            submission_id,
        )
    return outcome, campaign
