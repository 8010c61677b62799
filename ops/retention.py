"""Retention: a closed campaign's signatures lose their personal data once it has been
closed for longer than its `retain_days` (schemas/migrations/0010_erasure_retention.sql).

`anonymise_campaign` clears, in one transaction, every column of its signatures that
could name or reach a person (the encrypted names, email and postcode, the dedupe hash,
the sender's address prefix and hash, the email's domain), destroys the campaign's data
keys (so a backup's copy of the encrypted columns is unreadable too), deletes its
confirmation tokens and queued emails, and marks the campaign `anonymised_at`. The rows
stay, with their country, source, times and states: totals, breakdowns and the export's
counts do not move, and no version is bumped. Campaigns still open are never touched.
Running it again changes nothing more.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

import asyncpg

from runtime.db import Conn
from runtime.logs import get_logger

log = get_logger("ops.retention")

# Closed, not yet anonymised, and closed for longer than its retention.
_DUE = """
SELECT slug FROM campaigns
WHERE status = 'closed' AND anonymised_at IS NULL AND closed_at IS NOT NULL
  AND closed_at + make_interval(days => retain_days) <= $1
ORDER BY slug
"""

_CLEAR = """
UPDATE signatures
SET pii = NULL, key_id = NULL, first_name = NULL, last_name = NULL, email = NULL,
    postcode = NULL, email_hash = NULL, client_prefix = NULL, client_hash = NULL,
    email_domain = NULL
WHERE campaign = $1
  AND (pii IS NOT NULL OR email <> '' OR first_name <> '' OR last_name <> ''
       OR postcode IS NOT NULL OR email_hash IS NOT NULL OR client_prefix IS NOT NULL
       OR client_hash IS NOT NULL OR email_domain IS NOT NULL)
"""

_COUNT_PERSONAL = """
SELECT count(*) FROM signatures
WHERE campaign = $1
  AND (pii IS NOT NULL OR email <> '' OR first_name <> '' OR last_name <> ''
       OR postcode IS NOT NULL OR email_hash IS NOT NULL OR client_prefix IS NOT NULL
       OR client_hash IS NOT NULL OR email_domain IS NOT NULL)
"""


@dataclass(frozen=True, slots=True)
class Anonymised:
    """What anonymising one campaign did (or, dry, would do): counts only."""

    campaign: str
    signatures: int  # rows whose personal data was cleared
    tokens: int
    emails: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


async def due_campaigns(conn: Conn | asyncpg.Pool, now: datetime) -> list[str]:
    """Closed campaigns past their retention and not yet anonymised."""
    return [row["slug"] for row in await conn.fetch(_DUE, now)]


async def anonymise_campaign(conn: Conn, slug: str, *, dry_run: bool = False) -> Anonymised:
    """Clear the personal data of one closed campaign; the caller owns the transaction.

    Refuses (ValueError) a campaign that is not closed: an open one still collects.
    """
    status = await conn.fetchval("SELECT status FROM campaigns WHERE slug = $1 FOR UPDATE", slug)
    if status != "closed":
        raise ValueError(f"campaign {slug} is not closed")
    if dry_run:
        return Anonymised(
            slug,
            await conn.fetchval(_COUNT_PERSONAL, slug),
            await conn.fetchval(
                "SELECT count(*) FROM confirmation_tokens WHERE campaign = $1", slug
            ),
            await conn.fetchval("SELECT count(*) FROM mail_outbox WHERE campaign = $1", slug),
        )
    cleared = await conn.execute(_CLEAR, slug)
    tokens = await conn.execute("DELETE FROM confirmation_tokens WHERE campaign = $1", slug)
    emails = await conn.execute("DELETE FROM mail_outbox WHERE campaign = $1", slug)
    # The campaign's data keys are destroyed: whatever a backup, a dump or a replica
    # still holds of its signers' encrypted names and addresses can no longer be read,
    # by anyone, with any master key (runtime/pii.py). Taken under the lock the key
    # commands hold for a campaign, so no rotation writes a key back meanwhile.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('data_keys:' || $1))", slug)
    await conn.execute("DELETE FROM data_keys WHERE campaign = $1", slug)
    await conn.execute(
        "UPDATE campaigns SET anonymised_at = coalesce(anonymised_at, now()) WHERE slug = $1",
        slug,
    )
    return Anonymised(slug, _rows(cleared), _rows(tokens), _rows(emails))


def _rows(status: str) -> int:
    return int(status.rsplit(" ", 1)[1])


async def run_retention(
    pool: asyncpg.Pool, now: datetime, *, dry_run: bool = False
) -> list[Anonymised]:
    """Anonymise every campaign due at `now`, one transaction each; dry, count only."""
    done: list[Anonymised] = []
    for slug in await due_campaigns(pool, now):
        async with pool.acquire() as conn, conn.transaction():
            # another run may have done it meanwhile: skipped, or nothing more to clear
            if slug not in await due_campaigns(conn, now):
                continue
            result = await anonymise_campaign(conn, slug, dry_run=dry_run)
        done.append(result)
        if not dry_run:
            log.info("campaign_anonymised", **result.as_dict())
    return done
