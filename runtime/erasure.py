"""Erasure: forgetting a person, and keeping every replay from bringing them back.

One function, `erase`, serves `signatures forget` and the confirmation page's "this wasn't
me": in the caller's transaction it records a suppression by the keyed hash of the
person's normalised email (the dedupe key, computed exactly as the persist workers do),
deletes their signatures with their confirmation tokens and queued emails, and moves the
totals and breakdowns down by what those signatures counted, through `runtime.counts`
(a new version only when a public number changed). Running it again removes nothing more.

The persist workers consult the suppressions before storing a batch (`Suppressions`,
`suppressed`): a submission of a forgotten person received at or before the erasure is
counted as erased and dropped, never stored and never dead-lettered with its personal
data. Which time a
record was received (`receipt_time`): `received_at`, stamped by the API; a record
produced straight into Kafka by a partner lacks it, and its `submitted_at` (the partner's
clock) stands in, with the clock skew a submission may claim as a margin.

Both sides take one advisory lock (workers shared, erasure exclusive), so a batch in
flight while a person is forgotten either commits before the erasure reads the rows (and
its rows are deleted) or starts after it has committed (and sees the suppression).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from runtime.counts import BreakdownKey, add_counts, breakdown_of
from runtime.db import Conn
from runtime.dedupe import dedupe_key
from schemas.submission import CLOCK_SKEW, normalise_email

# pg_advisory_xact_lock key shared by the persist workers (shared) and erasures (exclusive)
ERASURE_LOCK = 0x5163_0010


@dataclass(frozen=True, slots=True)
class Erased:
    """What one erasure removed in one campaign: counts only, never who."""

    signatures: int = 0
    counted: int = 0  # of those, in the public total before
    pending: int = 0
    tokens: int = 0
    emails: int = 0


@dataclass(frozen=True)
class Erasure:
    by_campaign: dict[str, Erased] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # campaigns whose rows changed
    erased_at: datetime | None = None

    @property
    def signatures(self) -> int:
        return sum(e.signatures for e in self.by_campaign.values())


def person_hash(secret: bytes, address: str) -> bytes:
    """The dedupe key of an address, as the persist workers compute it.

    Raises pydantic's error (its message never repeats the address) if it is not one.
    """
    return dedupe_key(secret, normalise_email(address))


async def lock_for_erasure(conn: Conn) -> None:
    """Exclusive: wait for the batches being stored, hold new ones until commit."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", ERASURE_LOCK)


async def lock_for_storing(conn: Conn) -> None:
    """Shared: taken by the persist workers first thing in a batch's transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", ERASURE_LOCK)


# Both run as their owner (schemas/migrations/0011_roles.sql): the API's pages erase
# without being allowed to read anyone's email hash.
_SUPPRESS = "SELECT erase_suppress($1, $2)"

_DELETE = "SELECT * FROM erase_signatures($1, $2)"

_RECORD = """
INSERT INTO erased_submissions (submission_id, campaign, reason)
SELECT *, 'erased' FROM unnest($1::uuid[], $2::text[])
ON CONFLICT (submission_id) DO NOTHING
"""


async def erase(conn: Conn, email_hash: bytes, campaign: str | None) -> Erasure:
    """Forget one person, in one campaign or (None) in all; the caller owns the
    transaction, which must not have written anything yet (the lock comes first)."""
    await lock_for_erasure(conn)
    # the clock after the lock: every batch that committed before it is seen below
    erased_at = await conn.fetchval(_SUPPRESS, email_hash, campaign)
    rows = await conn.fetch(_DELETE, email_hash, campaign)
    if not rows:
        return Erasure(erased_at=erased_at)
    ids = [row["submission_id"] for row in rows]
    await conn.execute(_RECORD, ids, [row["campaign"] for row in rows])
    tokens = await conn.fetch(
        "DELETE FROM confirmation_tokens WHERE submission_id = ANY($1::uuid[]) RETURNING campaign",
        ids,
    )
    emails = await conn.fetch(
        "DELETE FROM mail_outbox WHERE submission_id = ANY($1::uuid[]) RETURNING campaign", ids
    )
    counted: Counter[str] = Counter()
    pending: Counter[str] = Counter()
    signatures: Counter[str] = Counter()
    breakdown: Counter[BreakdownKey] = Counter()
    for row in rows:
        campaign_of = row["campaign"]
        signatures[campaign_of] += 1
        if row["counted"]:
            counted[campaign_of] -= 1
            breakdown.update(breakdown_of(campaign_of, row["country"], row["source"], -1))
        if row["state"] == "pending":
            pending[campaign_of] -= 1
    versions = await add_counts(
        conn, counted=counted, pending=pending, breakdown=breakdown, campaigns=signatures
    )
    token_counts = Counter(row["campaign"] for row in tokens)
    email_counts = Counter(row["campaign"] for row in emails)
    return Erasure(
        {
            c: Erased(n, -counted[c], -pending[c], token_counts[c], email_counts[c])
            for c, n in sorted(signatures.items())
        },
        versions,
        erased_at,
    )


# --- the persist workers' side ---------------------------------------------------------

# A record without `received_at` carries only its producer's `submitted_at`, which may run
# ahead of the real time by up to the skew a submission may claim: suppressed if it claims
# no later than that after the erasure.
PRODUCER_CLOCK_MARGIN: timedelta = CLOCK_SKEW


def receipt_time(received_at: datetime | None, submitted_at: datetime) -> datetime:
    """When the pipeline got a submission, as far as it can tell, for the suppression."""
    if received_at is not None:
        return received_at
    return submitted_at - PRODUCER_CLOCK_MARGIN


def suppressed(
    email_hash: bytes,
    campaign: str,
    received: datetime,
    erasures: Mapping[bytes, Mapping[str | None, datetime]],
) -> bool:
    """Whether a submission belongs to an erasure: same person, that campaign or all (None),
    and received (see `receipt_time`) no later than the erasure."""
    scopes = erasures.get(email_hash)
    if not scopes:
        return False
    return any(
        (scope is None or scope == campaign) and received <= erased_at
        for scope, erased_at in scopes.items()
    )


# The erasures recorded since the last look, with the database's clock at this look. Read
# under the workers' shared lock: an erasure not visible here had not taken its exclusive
# lock yet, so its `erased_at` (read after that lock) is later than this clock.
CLOCK_STEP_MARGIN = timedelta(minutes=1)

_ERASURES_SINCE = """
SELECT n.now, e.email_hash, e.campaign, e.erased_at
FROM (SELECT clock_timestamp() AS now) n
LEFT JOIN erasures e ON $1::timestamptz IS NULL OR e.erased_at >= $1::timestamptz
"""


class Suppressions:
    """A persist worker's copy of `erasures`, brought up to date at every batch.

    Erasures are only ever added or moved later, so after the first batch each look reads
    only what changed since the one before: one small query per batch, however many people
    were forgotten, instead of sending every sender's hash to the database.
    """

    def __init__(self) -> None:
        self._by_hash: dict[bytes, dict[str | None, datetime]] = {}
        self._since: datetime | None = None

    async def refresh(self, conn: Conn) -> Mapping[bytes, Mapping[str | None, datetime]]:
        """Up to date for the caller's transaction, which holds `lock_for_storing`."""
        rows = await conn.fetch(_ERASURES_SINCE, self._since)
        for row in rows:
            if row["email_hash"] is not None:
                scopes = self._by_hash.setdefault(bytes(row["email_hash"]), {})
                scopes[row["campaign"]] = row["erased_at"]
        # a minute back: the next look reads the last minute's again, so that a step of the
        # database's clock cannot hide an erasure; a few rows at most
        self._since = rows[0]["now"] - CLOCK_STEP_MARGIN
        return self._by_hash


async def record_suppressed(conn: Conn, submissions: Sequence[tuple[UUID, str]]) -> None:
    """Account for suppressed records: every consumed record ends somewhere known."""
    if submissions:
        await conn.execute(
            """INSERT INTO erased_submissions (submission_id, campaign, reason)
               SELECT *, 'suppressed' FROM unnest($1::uuid[], $2::text[])
               ON CONFLICT (submission_id) DO NOTHING""",
            [s[0] for s in submissions],
            [s[1] for s in submissions],
        )
