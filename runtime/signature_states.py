"""Every change of a stored signature's state, applied one way, in the caller's transaction.

Confirming, removing ("this wasn't me") and marking undeliverable all come here: the rows
are locked and changed, then the campaign's counted total, breakdowns and pending count
move by exactly the difference (`runtime.counts`), with a new version only when a public
number changed. The counter publishes that version as it does for new signatures, so
the published totals never drift from the rows they count, whatever is replayed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from runtime.counts import BreakdownKey, add_counts, breakdown_of
from runtime.db import Conn
from schemas.campaign import SignatureState

_LOCK = """
SELECT submission_id, campaign, country, source, state FROM signatures
WHERE submission_id = ANY($1::uuid[]) AND state = ANY($2::text[])
ORDER BY submission_id
FOR UPDATE
"""

_CHANGE = """
UPDATE signatures SET state = $2, state_changed_at = now()
WHERE submission_id = ANY($1::uuid[])
"""

# What the owner asked us to forget: names, email and postcode, and the dedupe key (so
# that the person can still sign for themselves later).
_CHANGE_AND_CLEAR = """
UPDATE signatures
SET state = $2, state_changed_at = now(),
    first_name = '', last_name = '', email = '', postcode = NULL, email_hash = NULL
WHERE submission_id = ANY($1::uuid[])
"""


@dataclass(frozen=True)
class StateChange:
    changed: list[UUID] = field(default_factory=list)  # the rows whose state changed
    versions: dict[str, int] = field(default_factory=dict)  # every campaign touched


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
    await conn.execute(_CHANGE_AND_CLEAR if clear_personal_data else _CHANGE, ids, to.value)

    counted: Counter[str] = Counter()
    pending: Counter[str] = Counter()
    breakdown: Counter[BreakdownKey] = Counter()
    for row in rows:
        campaign, before = row["campaign"], SignatureState(row["state"])
        delta = int(to.counted) - int(before.counted)
        if delta:
            counted[campaign] += delta
            breakdown.update(breakdown_of(campaign, row["country"], row["source"], delta))
        pending[campaign] += int(to is SignatureState.PENDING) - int(
            before is SignatureState.PENDING
        )
    versions = await add_counts(
        conn,
        counted=counted,
        pending=pending,
        breakdown=breakdown,
        campaigns={row["campaign"] for row in rows},
    )
    return StateChange(ids, versions)
