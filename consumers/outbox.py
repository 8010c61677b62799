"""The mail outbox in PostgreSQL: claiming a due email, and recording what became of it.

A claim is one short transaction: it locks one due row and its signature (`SKIP LOCKED`:
senders never wait for each other), decides whether the email is still wanted, and if so
leases the row (`due_at = now() + lease`, `attempts + 1`) and stores a new token. It
commits before anything is sent, so the link in an email is always valid, and a sender
that dies mid-send leaves a lease that runs out: the row is sent again (at most one extra
email, never a lost one).

A signature has at most one email in flight (a leased row has `last_error` NULL and a
`due_at` in the future), and at most `MAX_EMAILS` sent, ever: the claim checks both with
the signature row locked, so two senders cannot both take the last one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

from consumers.emails import Letter
from runtime.confirmation import new_token
from runtime.db import Conn
from runtime.pii import DataKeys, reveal
from runtime.signature_states import change_state
from schemas.campaign import SignatureState

MAX_EMAILS = 5  # per signature, ever: a form cannot be used to flood someone's inbox
SIBLING_WAIT = timedelta(seconds=5)  # a row waits this long while its signature has one out

_CLAIM = """
SELECT o.prompted_by, o.kind, o.submission_id, o.campaign, o.attempts,
       s.state, s.emails_sent, s.language, c.status, c.title, c.target,
       s.key_id, s.pii, s.first_name, s.last_name, s.email, s.postcode
FROM mail_outbox o
JOIN signatures s ON s.submission_id = o.submission_id
JOIN campaigns c ON c.slug = o.campaign
WHERE o.finished_at IS NULL AND o.due_at <= now()
ORDER BY o.due_at
LIMIT 1
FOR UPDATE OF o, s SKIP LOCKED
"""

_IN_FLIGHT = """
SELECT EXISTS (
    SELECT 1 FROM mail_outbox
    WHERE submission_id = $1 AND finished_at IS NULL AND attempts > 0
      AND last_error IS NULL AND due_at > now()
      AND (prompted_by, kind) <> ($2::uuid, $3::text)
)
"""

_LEASE = """
UPDATE mail_outbox
SET attempts = attempts + 1, last_error = NULL, due_at = now() + $3::interval
WHERE prompted_by = $1 AND kind = $2
"""

_POSTPONE = """
UPDATE mail_outbox SET due_at = now() + $3::interval WHERE prompted_by = $1 AND kind = $2
"""

_FINISH = """
UPDATE mail_outbox SET outcome = $3, finished_at = now(), last_error = $4
WHERE prompted_by = $1 AND kind = $2
"""

_COUNT_SENT = "UPDATE signatures SET emails_sent = emails_sent + 1 WHERE submission_id = $1"

# Only within the bound: a row older than that gets no new due time and is given up.
_RETRY = """
UPDATE mail_outbox SET last_error = $3, due_at = now() + $4::interval
WHERE prompted_by = $1 AND kind = $2 AND created_at > now() - $5::interval
"""

# Once per signature (the key is its own id and 'reminder'), for those still pending a
# while after they were stored and that were sent at least one email.
_QUEUE_REMINDERS = """
INSERT INTO mail_outbox (prompted_by, kind, submission_id, campaign)
SELECT s.submission_id, 'reminder', s.submission_id, s.campaign
FROM signatures s
JOIN campaigns c ON c.slug = s.campaign AND c.status = 'open'
WHERE s.state = 'pending' AND s.persisted_at <= now() - $1::interval
  AND s.emails_sent >= 1 AND s.emails_sent < $2
  AND NOT EXISTS (
      SELECT 1 FROM mail_outbox o WHERE o.prompted_by = s.submission_id AND o.kind = 'reminder'
  )
ON CONFLICT DO NOTHING
"""


class Skip(enum.StrEnum):
    """Why a due email was not sent: finished as 'skipped'."""

    NOT_PENDING = "not_pending"  # confirmed, removed or undeliverable meanwhile
    CLOSED = "campaign_closed"
    LIMIT = "limit"  # the signature already had MAX_EMAILS


@dataclass(frozen=True, slots=True)
class Claim:
    """A leased row and the email to send for it."""

    prompted_by: UUID
    kind: str
    submission_id: UUID
    campaign: str
    attempts: int  # this one included
    letter: Letter = field(repr=False)


@dataclass(frozen=True, slots=True)
class NotSent:
    """A due row that was not leased: skipped for good, or postponed (reason None)."""

    submission_id: UUID
    skipped: Skip | None


async def claim(
    conn: Conn, keys: DataKeys, *, lease: timedelta, ttl: timedelta, public_url: str
) -> Claim | NotSent | None:
    """The next due email, leased, with its token committed; None when nothing is due.

    The address is decrypted here, in memory, only for a row that will be sent."""
    async with conn.transaction():
        row = await conn.fetchrow(_CLAIM)
        if row is None:
            return None
        key = (row["prompted_by"], row["kind"])
        skip = _skip(row["state"], row["status"], row["emails_sent"])
        [pii] = await reveal(conn, keys, [row]) if skip is None else [None]
        if skip is None and pii is None:
            skip = Skip.NOT_PENDING  # its personal data was cleared: nobody to write to
        if skip is not None:
            await conn.execute(_FINISH, *key, "skipped", None)
            return NotSent(row["submission_id"], skip)
        if await conn.fetchval(_IN_FLIGHT, row["submission_id"], *key):
            await conn.execute(_POSTPONE, *key, SIBLING_WAIT)
            return NotSent(row["submission_id"], None)
        await conn.execute(_LEASE, *key, lease)
        now = datetime.now(UTC)
        token = await new_token(conn, row["submission_id"], row["campaign"], now=now, ttl=ttl)
    if pii is None:  # not reached: a row without personal data is skipped above
        raise RuntimeError("no address to send to")
    letter = Letter(
        kind=row["kind"],
        to=pii.email,
        language=row["language"],
        title=row["title"],
        target=row["target"],
        link=f"{public_url}/confirm/{token}",
        expires_at=now + ttl,
    )
    return Claim(*key, row["submission_id"], row["campaign"], row["attempts"] + 1, letter)


def _skip(state: str, status: str, emails_sent: int) -> Skip | None:
    if state != SignatureState.PENDING:
        return Skip.NOT_PENDING
    if status != "open":
        return Skip.CLOSED
    if emails_sent >= MAX_EMAILS:
        return Skip.LIMIT
    return None


async def record_sent(conn: Conn, sent: Claim) -> None:
    """The email went out: the row is done and the signature's count moves on.

    Counted even if the row was finished meanwhile (its owner removed the signature while
    the email was on its way): what counts is that an email was sent.
    """
    async with conn.transaction():
        await conn.execute(_FINISH, sent.prompted_by, sent.kind, "sent", None)
        await conn.execute(_COUNT_SENT, sent.submission_id)


async def record_retry(
    conn: Conn, failed: Claim, error: str, *, delay: timedelta, give_up_after: timedelta
) -> bool:
    """A transient failure: due again after `delay`; or, once the row is older than
    `give_up_after`, given up and the signature undeliverable. True if it will be retried."""
    async with conn.transaction():
        status = await conn.execute(
            _RETRY, failed.prompted_by, failed.kind, error, delay, give_up_after
        )
        if status != "UPDATE 0":
            return True
        await _undeliverable(conn, failed, "gave_up", error)
        return False


async def record_undeliverable(conn: Conn, failed: Claim, error: str) -> None:
    """The server refused the address for good: the signature is undeliverable."""
    async with conn.transaction():
        await _undeliverable(conn, failed, "undeliverable", error)


async def _undeliverable(conn: Conn, failed: Claim, outcome: str, error: str) -> None:
    await conn.execute(_FINISH, failed.prompted_by, failed.kind, outcome, error)
    # pending → undeliverable changes no public number: only the operators' pending count
    await change_state(
        conn,
        [failed.submission_id],
        SignatureState.UNDELIVERABLE,
        allowed_from={SignatureState.PENDING},
    )


async def queue_reminders(conn: Conn, *, after: timedelta) -> int:
    """Queue the reminders now due; how many were queued."""
    status = await conn.execute(_QUEUE_REMINDERS, after, MAX_EMAILS)
    return int(status.rsplit(" ", 1)[1])
