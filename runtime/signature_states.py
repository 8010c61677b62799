"""Every change of a stored signature's state, applied one way, in the caller's transaction.

Confirming, removing ("this wasn't me"), marking undeliverable, and an operator's review
of flagged signatures (accepting or invalidating them) all come here: the rows are locked
and changed, then the campaign's counted total, breakdowns and pending count move by
exactly the difference (`runtime.counts`), with a new version only when a public number
changed. Whether a row counts is read from the database before and after the change (its
`counted` column, the one definition: schemas/migrations/0008_flags.sql), never decided
again here. The counter publishes that version as it does for new signatures, so the
published totals never drift from the rows they count, whatever is replayed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from runtime.counts import BreakdownKey, add_counts, breakdown_of
from runtime.db import Conn
from schemas.campaign import SignatureState
from schemas.flags import Review

_LOCK = """
SELECT submission_id, campaign, country, source, state, counted FROM signatures
WHERE submission_id = ANY($1::uuid[]) AND state = ANY($2::text[])
ORDER BY submission_id
FOR UPDATE
"""

_CHANGE = """
UPDATE signatures SET state = $2, state_changed_at = now()
WHERE submission_id = ANY($1::uuid[])
RETURNING submission_id, state, counted
"""

# What the owner asked us to forget: names, email and postcode (their encrypted blob, and
# the plaintext of a row stored before encryption), and the dedupe key (so that the person
# can still sign for themselves later).
_CHANGE_AND_CLEAR = """
UPDATE signatures
SET state = $2, state_changed_at = now(), pii = NULL, key_id = NULL,
    first_name = NULL, last_name = NULL, email = NULL, postcode = NULL, email_hash = NULL,
    client_prefix = NULL, client_hash = NULL, email_domain = NULL
WHERE submission_id = ANY($1::uuid[])
RETURNING submission_id, state, counted
"""

# An operator's review. Accepting applies to flagged signatures not yet reviewed; an
# invalidated signature stays invalidated (nothing accepts it again), and one its owner
# removed has nothing left to invalidate.
REVIEWABLE = {
    Review.ACCEPTED: "flag IS NOT NULL AND review IS NULL",
    Review.INVALIDATED: "review IS DISTINCT FROM 'invalidated' AND state <> 'removed'",
}
_LOCK_FOR_REVIEW = """
SELECT submission_id, campaign, country, source, state, counted FROM signatures
WHERE submission_id = ANY($1::uuid[]) AND {reviewable}
ORDER BY submission_id
FOR UPDATE
"""
_REVIEW = """
UPDATE signatures SET review = $2, reviewed_at = now()
WHERE submission_id = ANY($1::uuid[])
RETURNING submission_id, state, counted
"""


@dataclass(frozen=True)
class StateChange:
    changed: list[UUID] = field(default_factory=list)  # the rows whose state changed
    versions: dict[str, int] = field(default_factory=dict)  # every campaign touched
    counted: dict[str, int] = field(default_factory=dict)  # the public totals' change


async def change_state(
    conn: Conn,
    submission_ids: Sequence[UUID],
    to: SignatureState,
    *,
    allowed_from: Collection[SignatureState],
    clear_personal_data: bool = False,
) -> StateChange:
    """Move these signatures to `to` if they are in one of `allowed_from`; count the rest.

    Signatures in another state (or unknown) are left alone, so applying the same change
    twice changes nothing the second time. The caller owns the transaction.
    """
    sources = sorted(s.value for s in allowed_from if s is not to)
    rows = await conn.fetch(_LOCK, list(submission_ids), sources) if sources else []
    if not rows:
        return StateChange()
    ids = [row["submission_id"] for row in rows]
    after = await conn.fetch(_CHANGE_AND_CLEAR if clear_personal_data else _CHANGE, ids, to.value)
    return await _count_changes(conn, rows, after)


async def change_review(conn: Conn, submission_ids: Sequence[UUID], to: Review) -> StateChange:
    """Record an operator's review of these signatures, where it applies; count the rest.

    Accepting makes a flagged signature count once it is confirmed (at once if it is);
    invalidating takes a signature out of the count for good, counted or not, flagged or
    not. Applying the same review twice changes nothing the second time.
    """
    lock = _LOCK_FOR_REVIEW.format(reviewable=REVIEWABLE[to])
    rows = await conn.fetch(lock, list(submission_ids))
    if not rows:
        return StateChange()
    after = await conn.fetch(_REVIEW, [row["submission_id"] for row in rows], to.value)
    return await _count_changes(conn, rows, after)


async def _count_changes(
    conn: Conn, before: Sequence[asyncpg.Record], after: Sequence[asyncpg.Record]
) -> StateChange:
    """Move the totals by what changed between the locked rows and the same rows changed."""
    now = {row["submission_id"]: row for row in after}
    counted: Counter[str] = Counter()
    pending: Counter[str] = Counter()
    breakdown: Counter[BreakdownKey] = Counter()
    for row in before:
        campaign, changed = row["campaign"], now[row["submission_id"]]
        delta = int(changed["counted"]) - int(row["counted"])
        if delta:
            counted[campaign] += delta
            breakdown.update(breakdown_of(campaign, row["country"], row["source"], delta))
        pending[campaign] += int(changed["state"] == SignatureState.PENDING) - int(
            row["state"] == SignatureState.PENDING
        )
    versions = await add_counts(
        conn,
        counted=counted,
        pending=pending,
        breakdown=breakdown,
        campaigns={row["campaign"] for row in before},
    )
    return StateChange([row["submission_id"] for row in before], versions, dict(counted))
