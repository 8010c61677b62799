"""`signatures export --for-target`: the document handed over to a campaign's target.

What is handed over: the campaign's title, target and goal; the name, country and date of
each signature that counts (confirmed by its signer, not held by a flag nor invalidated);
the total and exact counts by country of those signatures. Never an email, a postcode, a
source or anything else a signer gave. The public page merges small countries into
"other" so that a rare country cannot single a person out; the delivery document lists
every name anyway, so its counts by country are the exact counts of the names it lists.

Names are read through `confirmed_signers` only, in one read-only snapshot together with
the campaign and the counts, so the list, the total and the counts always agree.

The file is written next to its destination with owner-only permissions and moved into
place once complete; its SHA-256 is returned for the record.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import re
import tempfile
import unicodedata
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

import asyncpg
from babel import Locale

from runtime.db import Conn
from runtime.pii import PII_COLUMNS, DataKeys, reveal


class DeliveryFormat(StrEnum):
    CSV = "csv"
    PDF = "pdf"


class UnknownCampaign(Exception):
    pass


class Anonymised(Exception):
    """The campaign's retention has passed: its signers' names are gone, counts remain."""


class Signer(NamedTuple):
    first_name: str
    last_name: str
    country: str
    signed_on: date


@dataclass(frozen=True)
class Delivery:
    """Everything about the campaign that the document states besides the names."""

    slug: str
    title: str
    target: str
    goal: int
    by_country: dict[str, int]  # exact counts of the listed signatures, largest first
    public_min_count: int  # below this the public page shows a country as "other"
    exported_on: date

    @property
    def total(self) -> int:
        return sum(self.by_country.values())


async def confirmed_signers(conn: Conn, slug: str, keys: DataKeys) -> AsyncIterator[Signer]:
    """The signatures of `slug` that count, oldest first: names, country, date signed
    (UTC). The one place exports read names, decrypted here in memory a chunk at a time
    (runtime/pii.py); call it inside a transaction. A row whose personal data was cleared
    (anonymised after retention) gives no name and is left out."""
    cursor = await conn.cursor(_SIGNERS, slug)
    while chunk := await cursor.fetch(_CHUNK):
        for row, pii in zip(chunk, await reveal(conn, keys, chunk), strict=True):
            if pii is None:
                continue
            yield Signer(
                pii.first_name,
                pii.last_name,
                row["country"],
                row["submitted_at"].astimezone(UTC).date(),
            )


_CHUNK = 2_000
_SIGNERS = f"""
SELECT {PII_COLUMNS}, s.country, s.submitted_at FROM signatures s
WHERE s.campaign = $1 AND s.counted ORDER BY s.id
"""  # noqa: S608 (a constant list of columns)


async def read_delivery(conn: Conn, slug: str, *, public_min_count: int) -> Delivery:
    campaign = await conn.fetchrow(
        "SELECT slug, title, target, goal, anonymised_at FROM campaigns WHERE slug = $1", slug
    )
    if campaign is None:
        raise UnknownCampaign(slug)
    if campaign["anonymised_at"] is not None:
        raise Anonymised(slug)
    rows = await conn.fetch(
        "SELECT country, count(*) AS n FROM signatures WHERE campaign = $1 AND counted "
        "GROUP BY country ORDER BY count(*) DESC, country",
        slug,
    )
    return Delivery(
        slug=campaign["slug"],
        title=campaign["title"],
        target=campaign["target"],
        goal=int(campaign["goal"]),
        by_country={row["country"]: int(row["n"]) for row in rows},
        public_min_count=public_min_count,
        exported_on=datetime.now(UTC).date(),
    )


def country_name(code: str) -> str:
    return str(Locale("en").territories.get(code, code))


def counts_note(delivery: Delivery) -> str:
    return (
        "Counts by country are the exact counts of the signatures listed here. The public "
        f"petition page shows countries with fewer than {delivery.public_min_count} "
        'signatures together as "other".'
    )


# Text: one line per value. Control characters and line or paragraph separators become
# spaces, runs of white space one space, and bidirectional embedding or override marks
# (which could make a name display as something else) are dropped.
_BIDI_CONTROLS = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


def clean_text(value: str) -> str:
    value = unicodedata.normalize("NFC", value).translate(_BIDI_CONTROLS)
    value = "".join(" " if unicodedata.category(c) in {"Cc", "Zl", "Zp"} else c for c in value)
    return " ".join(value.split())


# Formula injection (OWASP "CSV Injection"). A spreadsheet reads a cell as a formula when
# it starts with one of these, full-width forms included; leading white space may be
# trimmed first. A spreadsheet in a locale whose list separator is ';' splits a cell
# written with ',' at its semicolons (and one that uses ',' splits at commas), so every
# part that follows a ',' or ';' is a cell start too; so is a part starting with a double
# quote, which the other dialect reads as the opening of a quoted field whose content
# follows. Each such part gets an apostrophe before its first character: the spreadsheet
# shows it as text.
FORMULA_START = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")
_PARTS = re.compile(r"([,;])")


def _neutralise_part(part: str) -> str:
    body = part.lstrip()
    if body and (body[0] in FORMULA_START or body[0] == '"'):
        return f"{part[: len(part) - len(body)]}'{body}"
    return part


def csv_cell(value: object) -> str:
    """`value` as one line of text that no spreadsheet, in any locale, reads as a formula."""
    return "".join(_neutralise_part(part) for part in _PARTS.split(clean_text(str(value))))


def _csv_rows(delivery: Delivery) -> Iterable[tuple[object, ...]]:
    yield ("petition", delivery.title)
    yield ("target", delivery.target)
    yield ("goal", delivery.goal)
    yield ("signatures", delivery.total)
    yield ("exported_on", delivery.exported_on.isoformat())
    yield ("note", counts_note(delivery))
    yield ()
    yield ("country", "country_name", "signatures")
    for code, n in delivery.by_country.items():
        yield (code, country_name(code), n)
    yield ()
    yield ("first_name", "last_name", "country", "signed_on")


async def write_csv(delivery: Delivery, signers: AsyncIterator[Signer], path: Path) -> Counter[str]:
    """UTF-8 with a byte-order mark (so spreadsheets detect the encoding), ',' separated,
    CRLF line ends; returns the counts by country of the signatures written."""
    written: Counter[str] = Counter()
    with path.open("w", encoding="utf-8-sig", newline="") as out:
        writer = csv.writer(out, lineterminator="\r\n")
        for row in _csv_rows(delivery):
            writer.writerow([csv_cell(v) for v in row])
        async for signer in signers:
            writer.writerow(
                (
                    csv_cell(signer.first_name),
                    csv_cell(signer.last_name),
                    csv_cell(signer.country),
                    signer.signed_on.isoformat(),
                )
            )
            written[signer.country] += 1
    return written


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class OutputError(Exception):
    pass


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A private file beside `out`, moved onto `out` only if the block succeeds."""
    if out.is_dir():
        raise OutputError(f"cannot write {out}: it is a directory")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
    os.close(fd)
    staged = Path(name)
    try:
        yield staged
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)


async def _reporting(
    signers: AsyncIterator[Signer], total: int, progress: Callable[[int, int], None]
) -> AsyncIterator[Signer]:
    done = 0
    progress(done, total)
    async for signer in signers:
        yield signer
        done += 1
        if done % 1_000 == 0:
            progress(done, total)
    progress(done, total)


Writer = Callable[[Delivery, AsyncIterator[Signer], Path], Awaitable[Counter[str]]]


async def export_for_target(
    pool: asyncpg.Pool,
    slug: str,
    out: Path,
    fmt: DeliveryFormat,
    keys: DataKeys,
    *,
    public_min_count: int,
    progress: Callable[[int, int], None] = lambda _done, _total: None,
) -> tuple[Delivery, str]:
    """Write the delivery document of `slug` to `out`; returns what it states and its
    SHA-256. Raises UnknownCampaign, OutputError, or (PDF) delivery_pdf.FontsMissing
    before any signature is read. `progress(done, total)` follows the listing."""
    write: Writer
    if fmt is DeliveryFormat.PDF:
        # imported here: fpdf2 and the fonts only for a PDF (and delivery_pdf imports this)
        from ops.delivery_pdf import find_fonts, write_pdf  # noqa: PLC0415

        find_fonts()
        write = write_pdf
    else:
        write = write_csv
    with _staging(out) as staged:
        async with (
            pool.acquire() as conn,
            conn.transaction(readonly=True, isolation="repeatable_read"),
        ):
            delivery = await read_delivery(conn, slug, public_min_count=public_min_count)
            signers = _reporting(confirmed_signers(conn, slug, keys), delivery.total, progress)
            written = await write(delivery, signers, staged)
        if dict(written) != delivery.by_country:  # one snapshot: cannot differ
            raise RuntimeError("the signatures listed differ from the counts")
        digest = sha256_of(staged)
    return delivery, digest
