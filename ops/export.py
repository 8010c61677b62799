"""`signatures export`: the signatures of a campaign, for delivery to its target.

The signatures that count (confirmed, not held by a flag nor invalidated): names,
country and the date signed; never an email or a postcode. Cells that a spreadsheet
would read as a formula (starting with =, +, -, @, tab or carriage return)
are prefixed with an apostrophe, as OWASP recommends against CSV injection, so a
name like `=HYPERLINK(…)` arrives as text.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from typing import TextIO

import asyncpg

from runtime.pii import PII_COLUMNS, DataKeys, reveal

COLUMNS = ("first_name", "last_name", "country", "signed_on")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: str) -> str:
    return f"'{value}" if value.startswith(_FORMULA_START) else value


async def count_signatures(pool: asyncpg.Pool, campaign: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM signatures WHERE campaign = $1 AND counted", campaign
        )
    )


async def export_csv(
    pool: asyncpg.Pool,
    campaign: str,
    out: TextIO,
    keys: DataKeys,
    *,
    progress: Callable[[int], None] = lambda _n: None,
) -> int:
    """Write the campaign's signatures as CSV, oldest first; returns the rows written.

    The names are stored encrypted (runtime/pii.py): they are decrypted here, in memory,
    one chunk at a time, and nothing but the CSV is written."""
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    written = 0
    async with pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
        # every key of the campaign, unwrapped before the cursor opens
        await keys.by_ids(
            conn,
            [r["id"] for r in await conn.fetch(_KEYS, campaign)],
        )
        cursor = await conn.cursor(_ROWS, campaign)
        while chunk := await cursor.fetch(_CHUNK):
            for row, pii in zip(chunk, await reveal(conn, keys, chunk), strict=True):
                if pii is None:  # cleared: it no longer counts, but a row stays a row
                    continue
                writer.writerow(
                    (
                        safe_cell(pii.first_name),
                        safe_cell(pii.last_name),
                        row["country"],
                        row["submitted_at"].date().isoformat(),
                    )
                )
                written += 1
            progress(len(chunk))
    return written


_CHUNK = 5_000
_KEYS = "SELECT id FROM data_keys WHERE campaign = $1"
_ROWS = f"""
SELECT {PII_COLUMNS}, s.country, s.submitted_at FROM signatures s
WHERE s.campaign = $1 AND s.counted ORDER BY s.id
"""  # noqa: S608 (a constant list of columns)
