"""One batch of signatures into PostgreSQL, in the caller's transaction.

COPY into a per-connection staging table, then one `INSERT … ON CONFLICT DO NOTHING`
(unique submission_id; unique campaign + dedupe key), then the totals of what was really
inserted, once per batch. Running it twice for the same batch changes nothing.

On a campaign that requires confirmation a new signature is stored `pending`: it is
counted for operators, not in public; a partner that confirms its signers itself vouches
for its own (stored `confirmed`, `vouched_by` naming it). A person who signs again while
still pending gets the link again (a 'resend' in the mail outbox, within the mail worker's
limit).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

import asyncpg

from consumers.flags import FlagRules, NewSignature, flag_rates
from runtime.counts import BreakdownKey, add_counts
from runtime.db import Conn

STAGING_COLUMNS = (
    "submission_id",
    "campaign",
    "email_hash",
    "country",
    "consent",
    "language",
    "source",
    "submitted_at",
    "received_at",
    "client_prefix",
    "client_hash",
    "email_domain",
    "flag",
    "key_id",
    "pii",
)

# A row as decoded, before its personal data is encrypted (consumers/persist.py)
PlainRow = tuple[
    UUID,
    str,
    bytes,
    str,  # country
    bool,
    str | None,
    str,  # source
    datetime,  # submitted_at
    datetime | None,  # received_at
    str | None,  # client_prefix
    bytes | None,  # client_hash
    str,  # email_domain
    str | None,  # flag, as far as it is known before the batch's rates are counted
]
# ... and as stored: the names, email and postcode only as one encrypted blob, last
StagingRow = tuple[
    UUID,
    str,
    bytes,
    str,
    bool,
    str | None,
    str,
    datetime,
    datetime | None,
    str | None,
    bytes | None,
    str,
    str | None,
    int,  # key_id: the campaign's data key that encrypted pii
    bytes,  # pii: names, email and postcode, encrypted (runtime/pii.py)
]


class StoredSignature(NamedTuple):  # one per row: a tuple builds 3x faster than a frozen dataclass
    signature_id: int
    submission_id: UUID
    campaign: str
    country: str
    source: str
    submitted_at: datetime
    state: str  # pending or confirmed when stored; as stored now when redelivered
    counted: bool = False  # in the public total (schemas/migrations/0008_flags.sql)


@dataclass(slots=True)
class BatchResult:
    inserted: list[StoredSignature] = field(default_factory=list)
    already_stored: list[StoredSignature] = field(default_factory=list)  # redelivered
    removed: int = 0  # redelivered, but removed by its owner since: nothing to announce
    duplicates: int = 0  # same person again, under a new submission id
    resends: int = 0  # of those, repeats of a pending signer: the link goes out again
    # ids already stored for another person or campaign, with the stored row's campaign and
    # dedupe key: these rows are neither stored nor counted
    reused: dict[UUID, tuple[str, bytes]] = field(default_factory=dict)
    # per campaign, a version of its totals that counts every signature above
    versions: dict[str, int] = field(default_factory=dict)
    # new signatures held by a silent flag, by reason (consumers/flags.py)
    flagged: Counter[str] = field(default_factory=Counter)


_INSERT = """
INSERT INTO signatures (submission_id, campaign, email_hash, key_id, pii,
                        country, consent, language, source, submitted_at, received_at,
                        client_prefix, client_hash, email_domain, flag, state)
SELECT submission_id, campaign, email_hash, key_id, pii,
       country, consent, language, source, submitted_at, received_at,
       client_prefix::cidr, client_hash, email_domain, flag,
       CASE WHEN campaign = ANY($1::text[]) THEN 'pending' ELSE 'confirmed' END
FROM staging_signatures
ORDER BY campaign, email_hash, submitted_at  -- one lock order for all workers; earliest wins
ON CONFLICT DO NOTHING
RETURNING id, submission_id, state, counted
"""

# The same, for batches written while some partner confirms its signers itself: on a
# campaign that requires confirmation, such a partner's new signatures ($2: their sources)
# are stored confirmed, naming the partner. Other batches run _INSERT as it is.
_INSERT_VOUCHED = _INSERT.replace("state)", "state, vouched_by)").replace(
    "THEN 'pending' ELSE 'confirmed' END",
    "AND source <> ALL($2::text[]) THEN 'pending' ELSE 'confirmed' END,\n"
    "       CASE WHEN campaign = ANY($1::text[]) AND source = ANY($2::text[])\n"
    "            THEN substr(source, length('partner:') + 1) END",
)

_ALREADY_STORED = """
SELECT id, submission_id, campaign, email_hash, country, source, submitted_at, state
FROM signatures WHERE submission_id = ANY($1::uuid[])
"""

_RECORD_DUPLICATES = """
INSERT INTO duplicate_submissions (submission_id, campaign, source)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[])
ON CONFLICT DO NOTHING
RETURNING campaign
"""

# A repeat of a signer still pending asks for the link again; keyed by the repeat, so
# a redelivery asks nothing more.
_QUEUE_RESENDS = """
INSERT INTO mail_outbox (prompted_by, kind, submission_id, campaign)
SELECT d.prompted_by, 'resend', s.submission_id, s.campaign
FROM unnest($1::uuid[], $2::text[], $3::bytea[]) AS d(prompted_by, campaign, email_hash)
JOIN signatures s ON s.campaign = d.campaign AND s.email_hash = d.email_hash
WHERE s.state = 'pending'
ON CONFLICT DO NOTHING
"""


def _stored(row: asyncpg.Record) -> StoredSignature:
    return StoredSignature(
        signature_id=row["id"],
        submission_id=row["submission_id"],
        campaign=row["campaign"],
        country=row["country"],
        source=row["source"],
        submitted_at=row["submitted_at"],
        state=row["state"],
    )


async def write_batch(
    conn: Conn,
    rows: list[StagingRow],
    confirm: Collection[str] = (),
    vouchers: Collection[str] = (),
    rules: FlagRules | None = None,
) -> BatchResult:
    """Insert what is new, count what is a duplicate; the caller owns the transaction.

    `rows` must have distinct submission ids. A submission id already stored with the same
    campaign and dedupe key is a redelivery (nothing changes); with another, it is reused.
    New signatures of the campaigns in `confirm` are stored pending, but for those whose
    source is in `vouchers` (partners that confirm their signers themselves).
    """
    result = BatchResult()
    if not rows:
        return result
    await conn.copy_records_to_table("staging_signatures", records=rows, columns=STAGING_COLUMNS)
    by_id = {row[0]: row for row in rows}
    inserting = (
        conn.fetch(_INSERT_VOUCHED, list(confirm), list(vouchers))
        if confirm and vouchers
        else conn.fetch(_INSERT, list(confirm))
    )
    for signature_id, submission_id, state, counted in await inserting:
        row = by_id[submission_id]
        result.inserted.append(
            StoredSignature(
                signature_id, submission_id, row[1], row[3], row[6], row[7], state, counted
            )
        )
    if rules is not None and result.inserted:
        await _flag(conn, rules, result, by_id)

    inserted_ids = {s.submission_id for s in result.inserted}
    leftovers = {sid: row for sid, row in by_id.items() if sid not in inserted_ids}
    if leftovers:
        for stored in await conn.fetch(_ALREADY_STORED, list(leftovers)):
            row = leftovers.pop(stored["submission_id"])
            if stored["state"] == "removed" and stored["campaign"] == row[1]:
                result.removed += 1  # its owner removed it: it stays removed
            elif (stored["campaign"], stored["email_hash"]) == (row[1], row[2]):
                result.already_stored.append(_stored(stored))
            else:
                result.reused[row[0]] = (stored["campaign"], stored["email_hash"])
    new_duplicates: Counter[str] = Counter()
    if leftovers:
        dupes = list(leftovers.values())
        recorded = await conn.fetch(
            _RECORD_DUPLICATES,
            [row[0] for row in dupes],
            [row[1] for row in dupes],
            [row[6] for row in dupes],
        )
        new_duplicates.update(row["campaign"] for row in recorded)
        result.duplicates = len(dupes)
        repeats = [row for row in dupes if row[1] in confirm]
        if repeats:
            status = await conn.execute(
                _QUEUE_RESENDS,
                [row[0] for row in repeats],
                [row[1] for row in repeats],
                [row[2] for row in repeats],
            )
            result.resends = int(status.rsplit(" ", 1)[1])

    # every campaign with a row in the batch gets a version for its accepted events, those
    # whose new signatures all wait (pending, or held by a flag) included
    result.versions = await _add_totals(
        conn,
        result.inserted,
        new_duplicates,
        {s.campaign for s in (*result.already_stored, *result.inserted)},
    )
    return result


async def _add_totals(
    conn: Conn,
    inserted: list[StoredSignature],
    duplicates: Counter[str],
    also: set[str],
) -> dict[str, int]:
    # counted in C (Counter over an iterable), not one `+=` per signature and dimension
    counted = [s for s in inserted if s.counted]
    breakdown: Counter[BreakdownKey] = Counter((s.campaign, "country", s.country) for s in counted)
    breakdown.update((s.campaign, "source", s.source) for s in counted)
    return await add_counts(
        conn,
        counted=Counter(s.campaign for s in counted),
        pending=Counter(s.campaign for s in inserted if s.state == "pending"),
        duplicates=duplicates,
        breakdown=breakdown,
        campaigns=also,
    )


async def _flag(
    conn: Conn, rules: FlagRules, result: BatchResult, by_id: dict[UUID, StagingRow]
) -> None:
    """Count the new signatures' rates and flag those past them; keep `inserted` as stored
    (a signature flagged now does not count) and the flags of the batch by reason."""
    new = []
    for s in result.inserted:
        row = by_id[s.submission_id]
        if row[12] is not None:
            result.flagged[row[12]] += 1
        new.append(
            NewSignature(s.submission_id, s.campaign, row[8] or row[7], row[9], row[11],
                         row[12] is not None)
        )  # fmt: skip
    flagged = await flag_rates(conn, rules, new)
    if not flagged:
        return
    for i, s in enumerate(result.inserted):
        if s.submission_id in flagged:
            reason, counted = flagged[s.submission_id]
            result.inserted[i] = s._replace(counted=counted)
            result.flagged[reason] += 1
