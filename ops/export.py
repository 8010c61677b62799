"""`signatures export`: the signatures of a campaign, for delivery to its target.

The signatures that count (confirmed, not held by a flag nor invalidated): names,
country and the date signed; never an email or a postcode. Cells that a spreadsheet
would read as a formula (starting with =, +, -, @, tab or carriage return)
are prefixed with an apostrophe, as OWASP recommends against CSV injection, so a
name like `=HYPERLINK(…)` arrives as text. Names are read by `confirmed_signers`, the one
place exports read them.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from typing import TextIO

import asyncpg

from ops.delivery import confirmed_signers
from runtime.pii import DataKeys

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

    The names are stored encrypted (runtime/pii.py): `confirmed_signers` decrypts them in
    memory, a chunk at a time, and nothing but the CSV is written."""
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    written = 0
    async with pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
        async for signer in confirmed_signers(conn, campaign, keys):
            writer.writerow(
                (
                    safe_cell(signer.first_name),
                    safe_cell(signer.last_name),
                    signer.country,
                    signer.signed_on.isoformat(),
                )
            )
            written += 1
            if written % 5_000 == 0:
                progress(5_000)
    progress(written % 5_000)
    return written
