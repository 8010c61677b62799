"""One batch of signatures into PostgreSQL, in the caller's transaction.

COPY into a per-connection staging table, then one `INSERT … ON CONFLICT DO NOTHING`
(unique submission_id; unique campaign + dedupe key), then the totals of what was really
inserted, once per batch. Running it twice for the same batch changes nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

import asyncpg

from runtime.db import Conn

STAGING_COLUMNS = (
    "submission_id",
    "campaign",
    "email_hash",
    "first_name",
    "last_name",
    "email",
    "country",
    "postcode",
    "consent",
    "language",
    "source",
    "submitted_at",
    "received_at",
)

StagingRow = tuple[
    UUID,
    str,
    bytes,
    str,
    str,
    str,
    str,
    str | None,
    bool,
    str | None,
    str,
    datetime,
    datetime | None,
]


class StoredSignature(NamedTuple):  # one per row: a tuple builds 3x faster than a frozen dataclass
    signature_id: int
    submission_id: UUID
    campaign: str
    country: str
    source: str
    submitted_at: datetime


@dataclass(slots=True)
class BatchResult:
    inserted: list[StoredSignature] = field(default_factory=list)
    already_stored: list[StoredSignature] = field(default_factory=list)  # redelivered
    duplicates: int = 0  # same person again, under a new submission id
    # ids already stored for another person or campaign, with the stored row's campaign and
    # dedupe key: these rows are neither stored nor counted
    reused: dict[UUID, tuple[str, bytes]] = field(default_factory=dict)
    # per campaign, a version of its totals that counts every signature above
    versions: dict[str, int] = field(default_factory=dict)


_INSERT = """
INSERT INTO signatures (submission_id, campaign, email_hash, first_name, last_name, email,
                        country, postcode, consent, language, source, submitted_at, received_at)
SELECT submission_id, campaign, email_hash, first_name, last_name, email,
       country, postcode, consent, language, source, submitted_at, received_at
FROM staging_signatures
ORDER BY campaign, email_hash, submitted_at  -- one lock order for all workers; earliest wins
ON CONFLICT DO NOTHING
RETURNING id, submission_id
"""

_ALREADY_STORED = """
SELECT id, submission_id, campaign, email_hash, country, source, submitted_at
FROM signatures WHERE submission_id = ANY($1::uuid[])
"""

_RECORD_DUPLICATES = """
INSERT INTO duplicate_submissions (submission_id, campaign, source)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[])
ON CONFLICT DO NOTHING
RETURNING campaign
"""

_ADD_BREAKDOWN = """
INSERT INTO campaign_breakdown (campaign, dimension, key, count)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS d(c, dim, k, n)
ORDER BY c, dim, k
ON CONFLICT (campaign, dimension, key)
DO UPDATE SET count = campaign_breakdown.count + excluded.count
"""

_ADD_TOTAL = """
UPDATE campaign_totals
SET total = total + $2, duplicates = duplicates + $3, version = version + 1, updated_at = now()
WHERE campaign = $1
RETURNING version
"""

_VERSIONS = "SELECT campaign, version FROM campaign_totals WHERE campaign = ANY($1::text[])"


def _stored(row: asyncpg.Record) -> StoredSignature:
    return StoredSignature(
        signature_id=row["id"],
        submission_id=row["submission_id"],
        campaign=row["campaign"],
        country=row["country"],
        source=row["source"],
        submitted_at=row["submitted_at"],
    )


async def write_batch(conn: Conn, rows: list[StagingRow]) -> BatchResult:
    """Insert what is new, count what is a duplicate; the caller owns the transaction.

    `rows` must have distinct submission ids. A submission id already stored with the same
    campaign and dedupe key is a redelivery (nothing changes); with another, it is reused.
    """
    result = BatchResult()
    if not rows:
        return result
    await conn.copy_records_to_table("staging_signatures", records=rows, columns=STAGING_COLUMNS)
    by_id = {row[0]: row for row in rows}
    for signature_id, submission_id in await conn.fetch(_INSERT):
        row = by_id[submission_id]
        result.inserted.append(
            StoredSignature(signature_id, submission_id, row[1], row[6], row[10], row[11])
        )

    inserted_ids = {s.submission_id for s in result.inserted}
    leftovers = {sid: row for sid, row in by_id.items() if sid not in inserted_ids}
    if leftovers:
        for stored in await conn.fetch(_ALREADY_STORED, list(leftovers)):
            row = leftovers.pop(stored["submission_id"])
            if (stored["campaign"], stored["email_hash"]) == (row[1], row[2]):
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
            [row[10] for row in dupes],
        )
        new_duplicates.update(row["campaign"] for row in recorded)
        result.duplicates = len(dupes)

    result.versions = await _add_totals(conn, result.inserted, new_duplicates)
    unversioned = {s.campaign for s in result.already_stored} - result.versions.keys()
    if unversioned:
        for campaign, version in await conn.fetch(_VERSIONS, sorted(unversioned)):
            result.versions[campaign] = version
    return result


async def _add_totals(
    conn: Conn, inserted: list[StoredSignature], duplicates: Counter[str]
) -> dict[str, int]:
    # counted in C (Counter over an iterable), not one `+=` per signature and dimension
    totals = Counter(s.campaign for s in inserted)
    breakdown = Counter((s.campaign, "country", s.country) for s in inserted)
    breakdown.update((s.campaign, "source", s.source) for s in inserted)
    if breakdown:
        keys = sorted(breakdown)
        await conn.execute(
            _ADD_BREAKDOWN,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [breakdown[k] for k in keys],
        )
    versions = {}
    for campaign in sorted(set(totals) | set(duplicates)):
        versions[campaign] = await conn.fetchval(
            _ADD_TOTAL, campaign, totals[campaign], duplicates[campaign]
        )
    return versions
