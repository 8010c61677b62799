"""`signatures export --for-target`: the document handed over to the campaign's target."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pypdf import PdfReader

from ops import delivery_pdf
from ops.delivery import (
    FORMULA_START,
    DeliveryFormat,
    OutputError,
    UnknownCampaign,
    clean_text,
    csv_cell,
    export_for_target,
)
from ops.export import export_csv, safe_cell
from ops.reconcile import reconcile_campaign
from runtime.campaigns import create_campaign, read_totals
from schemas.campaign import Confirmation, NewCampaign
from tests.conftest import MASTER_KEY, SECRET
from tests.helpers import CAMPAIGN, keys_for_tests
from tests.processes import cli_env, signatures

KEYS = keys_for_tests()  # the rows seeded here are plaintext, from before encryption

SIGNED = datetime(2026, 11, 30, 22, 15, tzinfo=UTC)

# (first name, last name, country): every one of these counts
COUNTED = [
    ("Giulia", "Rossi", "IT"),
    ("Иван", "Петров", "RU"),
    ("Ольга", "Шевченко", "UA"),
    ("Σεραφεία", "Ελευθερίου", "GR"),
    ("Μαρία", "Παπαδοπούλου", "GR"),
    ("美咲", "佐藤", "JP"),
    ("민준", "김", "KR"),
    ("سجاد", "ولاشجردی", "IR"),
    ("אביה", "שגב", "IL"),
    ("लोचन", "घोष", "IN"),
    ("=cmd|' /C calc'!A0", "Doe", "GB"),
    ("+1", "-1", "US"),
    ("@SUM(1)", "Smith", "US"),
    ("Anna", "Bianchi;=1+1", "IT"),
    ("Bob,+2", "Ba;@x", "FR"),
    ("\tTab", "Line\nBreak\r\nHere", "DE"),
    ("＝1+1", "－2", "JP"),
    (' "=2"', "x; -3", "IT"),
]
# what a spreadsheet shows for each of those names: formulas defused, one line each
EXPECTED_CSV_NAMES = [
    ("Giulia", "Rossi"),
    ("Иван", "Петров"),
    ("Ольга", "Шевченко"),
    ("Σεραφεία", "Ελευθερίου"),
    ("Μαρία", "Παπαδοπούλου"),
    ("美咲", "佐藤"),
    ("민준", "김"),
    ("سجاد", "ولاشجردی"),
    ("אביה", "שגב"),
    ("लोचन", "घोष"),
    ("'=cmd|' /C calc'!A0", "Doe"),
    ("'+1", "'-1"),
    ("'@SUM(1)", "Smith"),
    ("Anna", "Bianchi;'=1+1"),
    ("Bob,'+2", "Ba;'@x"),
    ("Tab", "Line Break Here"),
    ("'＝1+1", "'－2"),
    ('\'"=2"', "x; '-3"),
]
# names that must never appear: signatures that do not count, or of another campaign
EXCLUDED = {
    "Pendente": {"state": "pending"},
    "Rimossa": {"state": "removed"},
    "Nonconsegnata": {"state": "undeliverable"},
    "Segnalata": {"flag": "too_fast"},
    "Invalidata": {"flag": "honeypot", "review": "invalidated"},
    "Altracampagna": {"campaign": "altra"},
}
ACCEPTED = ("Accettata", "Verificata", "IT")  # flagged, then accepted by an operator: counts


def email_of(n: int) -> str:
    return f"signer{n}.private@mail.example"


def postcode_of(n: int) -> str:
    return f"PC{n:04d}X"


async def insert(
    pool: asyncpg.Pool,
    n: int,
    first: str,
    last: str,
    country: str,
    *,
    campaign: str = CAMPAIGN.slug,
    state: str = "confirmed",
    flag: str | None = None,
    review: str | None = None,
) -> None:
    await pool.execute(
        "INSERT INTO signatures (submission_id, campaign, email_hash, first_name, last_name, "
        "email, country, postcode, consent, source, submitted_at, state, flag, review) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true, 'web', $9, $10, $11, $12)",
        uuid.uuid4(),
        campaign,
        os.urandom(32),
        first,
        last,
        email_of(n),
        country,
        postcode_of(n),
        SIGNED,
        state,
        flag,
        review,
    )


async def seed(pool: asyncpg.Pool) -> dict[str, int]:
    """The test campaign with COUNTED, ACCEPTED and EXCLUDED; returns the exact counts."""
    await create_campaign(pool, CAMPAIGN)
    await create_campaign(
        pool,
        NewCampaign(
            slug="altra", title="Altra", target="X", goal=10, confirmation=Confirmation.OFF
        ),
    )
    for n, (first, last, country) in enumerate([*COUNTED, ACCEPTED]):
        await insert(
            pool, n, first, last, country, review="accepted" if n == len(COUNTED) else None
        )
    await pool.execute("UPDATE signatures SET flag = 'too_fast' WHERE first_name = $1", ACCEPTED[0])
    for n, (name, how) in enumerate(EXCLUDED.items(), start=100):
        await insert(pool, n, name, name, "IT", **how)
    counts: dict[str, int] = {}
    for _, _, country in [*COUNTED, ACCEPTED]:
        counts[country] = counts.get(country, 0) + 1
    return counts


def formula_cells(text: str, delimiter: str) -> list[str]:
    """The cells a spreadsheet splitting at `delimiter` would read as a formula."""
    return [
        cell
        for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        for cell in row
        if cell.lstrip()[:1] in FORMULA_START
    ]


def private_data(text: str) -> list[str]:
    numbers = range(len(COUNTED) + 1 + 100 + len(EXCLUDED))
    found = [s for n in numbers for s in (email_of(n), postcode_of(n)) if s in text]
    return found + (["mail.example"] if "mail.example" in text else [])


HOSTILE = [
    "=1+1", "+1", "-1", "@SUM(1)", "\t=1", "\r=1", "＝1", "＋1", "－1", "＠1",
    "a;=1", "a,=1", "a; =1", "a;\t=1", 'a;"=1', 'a,"=1";b', ' "=1"', "a;;=1", "=1;=2,=3",
    "x\n=1", "x\r\n@1", "x\u2028=1", 'O"Neil;=1', "a,b;c=d",
]  # fmt: skip


def test_hostile_cells_are_text_in_either_dialect() -> None:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    for value in HOSTILE:
        writer.writerow([value, csv_cell(value), "x"])
    raw = out.getvalue()
    assert formula_cells(raw, ",")  # written as they are, these would be formulas
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    for value in HOSTILE:
        writer.writerow(["x", csv_cell(value), csv_cell(value)])
    text = out.getvalue()
    assert formula_cells(text, ",") == []
    assert formula_cells(text, ";") == []
    assert text.count("\r\n") == len(HOSTILE)  # one line per row: no newline in a cell
    assert csv_cell("Anna;=1+1") == "Anna;'=1+1"
    assert csv_cell("O'Neil, Jean-Pierre") == "O'Neil, Jean-Pierre"  # names stay as they are


@hypothesis_settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.sampled_from([*FORMULA_START, *",; \"'\n\u00a0ab1"]), max_size=12),
        min_size=1,
        max_size=4,
    )
)
def test_no_value_becomes_a_formula(values: list[str]) -> None:
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerow([csv_cell(v) for v in values])
    text = out.getvalue()
    assert formula_cells(text, ",") == []
    assert formula_cells(text, ";") == []
    cells = next(csv.reader(io.StringIO(text, newline="")))
    assert cells == [csv_cell(v) for v in values]
    for value, cell in zip(values, cells, strict=True):  # only apostrophes were added
        assert cell.replace("'", "") == clean_text(value).replace("'", "")
        assert "\n" not in cell and "\r" not in cell


@pytest.mark.integration
async def test_csv_for_target(pool: asyncpg.Pool, tmp_path: Path) -> None:
    counts = await seed(pool)
    out = tmp_path / "delivery.csv"
    delivery, digest = await export_for_target(
        pool, CAMPAIGN.slug, out, DeliveryFormat.CSV, KEYS, public_min_count=10
    )
    raw = out.read_bytes()
    assert digest == hashlib.sha256(raw).hexdigest()
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 byte-order mark
    assert out.stat().st_mode & 0o077 == 0  # names: readable by its owner only
    text = raw.decode("utf-8-sig")
    assert formula_cells(text, ",") == []
    assert formula_cells(text, ";") == []
    assert private_data(text) == []
    for name in [*EXCLUDED, "Pendente"]:
        assert name not in text

    rows = list(csv.reader(io.StringIO(text, newline="")))
    facts = {row[0]: row[1] for row in rows[: rows.index([])]}
    assert facts["petition"] == CAMPAIGN.title
    assert facts["target"] == CAMPAIGN.target
    assert facts["goal"] == "200000"
    assert facts["signatures"] == str(len(COUNTED) + 1)
    assert "exact counts" in facts["note"]
    start = rows.index(["country", "country_name", "signatures"])
    header = rows.index(["first_name", "last_name", "country", "signed_on"])
    by_country = {row[0]: int(row[2]) for row in rows[start + 1 : header - 1]}
    assert by_country == counts == delivery.by_country
    assert ["GR", "Greece", "2"] in rows
    listed = rows[header + 1 :]
    assert [tuple(row[:2]) for row in listed] == [*EXPECTED_CSV_NAMES, ACCEPTED[:2]]
    assert {row[2] for row in listed} == set(counts)
    assert {row[3] for row in listed} == {"2026-11-30"}  # the date in UTC

    # the exact counts are the public breakdown before small countries are merged
    async with pool.acquire() as conn:
        await reconcile_campaign(conn, CAMPAIGN.slug)
    (exact,) = await read_totals(pool, [CAMPAIGN.slug], min_count=1)
    assert exact.by_country == by_country
    (public,) = await read_totals(pool, [CAMPAIGN.slug], min_count=3)
    assert public.by_country == {"IT": 4, "other": len(COUNTED) + 1 - 4}


@pytest.mark.integration
async def test_pdf_for_target(pool: asyncpg.Pool, tmp_path: Path) -> None:
    counts = await seed(pool)
    out = tmp_path / "delivery.pdf"
    delivery, digest = await export_for_target(
        pool, CAMPAIGN.slug, out, DeliveryFormat.PDF, KEYS, public_min_count=10
    )
    assert digest == hashlib.sha256(out.read_bytes()).hexdigest()
    assert delivery.by_country == counts
    reader = PdfReader(out)
    pages = [page.extract_text() for page in reader.pages]
    text = "\n".join(pages)
    cover = pages[0]
    assert CAMPAIGN.title in cover and CAMPAIGN.target in cover
    assert "200,000" in cover
    assert f"Signatures {len(COUNTED) + 1}" in cover
    assert "Greece 2" in cover and "Italy 4" in cover and "Ukraine 1" in cover
    assert "exact counts" in cover
    assert pages[-1].rstrip().endswith(f"Page {len(pages)} of {len(pages)}")
    for first, last in [("Иван", "Петров"), ("Ольга", "Шевченко"), ("Σεραφεία", "Ελευθερίου")]:
        assert f"{first} {last}" in text
    for name in [
        "Μαρία",
        "Giulia",
        "美咲",
        "佐藤",
        "김",
        "=cmd|' /C calc'!A0",
        "@SUM(1)",
        "Accettata",
    ]:
        assert name in text
    assert "Line Break Here" in text  # one line, no raw control character
    for name in EXCLUDED:
        assert name not in text
    assert private_data(text) == []
    assert private_data(str(reader.metadata)) == []


@pytest.mark.integration
async def test_refusals(pool: asyncpg.Pool, tmp_path: Path) -> None:
    await seed(pool)
    with pytest.raises(UnknownCampaign):
        await export_for_target(
            pool, "nope", tmp_path / "x.csv", DeliveryFormat.CSV, KEYS, public_min_count=10
        )
    with pytest.raises(OutputError, match="cannot write"):
        await export_for_target(
            pool,
            CAMPAIGN.slug,
            tmp_path / "absent" / "x.pdf",
            DeliveryFormat.PDF,
            KEYS,
            public_min_count=10,
        )
    with pytest.raises(OutputError, match="is a directory"):
        await export_for_target(
            pool, CAMPAIGN.slug, tmp_path, DeliveryFormat.CSV, KEYS, public_min_count=10
        )
    assert os.listdir(tmp_path) == []  # nothing left behind


@pytest.mark.integration
async def test_plain_export_is_unchanged(pool: asyncpg.Pool) -> None:
    """Without --for-target: one header, the counted signatures' cells as they were (only
    a leading formula character defused), no byte-order mark, no campaign facts."""
    await seed(pool)
    out = io.StringIO(newline="")
    assert await export_csv(pool, CAMPAIGN.slug, out, KEYS) == len(COUNTED) + 1
    rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert rows == [
        ["first_name", "last_name", "country", "signed_on"],
        *(
            [safe_cell(first), safe_cell(last), country, "2026-11-30"]
            for first, last, country in [*COUNTED, ACCEPTED]
        ),
    ]


@pytest.mark.integration
async def test_missing_fonts_and_an_empty_campaign(
    pool: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await create_campaign(pool, CAMPAIGN)
    for fmt in DeliveryFormat:
        delivery, _ = await export_for_target(
            pool, CAMPAIGN.slug, tmp_path / f"empty.{fmt}", fmt, KEYS, public_min_count=10
        )
        assert (delivery.total, delivery.by_country) == (0, {})
    text = "".join(page.extract_text() for page in PdfReader(tmp_path / "empty.pdf").pages)
    assert "Signatures 0" in text and "No signature counts yet." in text
    empty_csv = (tmp_path / "empty.csv").read_bytes()
    assert empty_csv.endswith(b"\r\n\r\nfirst_name,last_name,country,signed_on\r\n")

    monkeypatch.setattr(delivery_pdf, "FONT_ROOT", tmp_path / "no-fonts")
    with pytest.raises(delivery_pdf.FontsMissing) as missing:
        await export_for_target(
            pool, CAMPAIGN.slug, tmp_path / "x.pdf", DeliveryFormat.PDF, KEYS, public_min_count=10
        )
    message = str(missing.value)
    assert "\n" not in message and "NotoSans-Regular.ttf" in message
    assert "fonts-noto-core fonts-wqy-microhei fonts-dejavu-core" in message
    assert not (tmp_path / "x.pdf").exists()


@pytest.mark.integration
@pytest.mark.slow
async def test_cli_for_target(pool: asyncpg.Pool, database_url: str, tmp_path: Path) -> None:
    await seed(pool)
    env = cli_env(
        database_url, tmp_path, SIGNATURES_DEDUPE_SECRET=SECRET, SIGNATURES_MASTER_KEY=MASTER_KEY
    )
    names = [name for row in COUNTED for name in row[:2] if len(name) > 2]
    for fmt in ("pdf", "csv"):
        target = tmp_path / f"delivery.{fmt}"
        done = signatures(
            "export", "--campaign", CAMPAIGN.slug, "--for-target", "--format", fmt,
            "--out", str(target), env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{hashlib.sha256(target.read_bytes()).hexdigest()}  {target}\n"
        summary = f"{len(COUNTED) + 1} signatures of {CAMPAIGN.slug} written as {fmt}\n"
        assert done.stderr == summary  # and nothing else: no log line about the file's text
        for name in names:  # nothing personal on the terminal or in the logs
            assert name not in done.stdout + done.stderr
        assert private_data(done.stdout + done.stderr) == []

    unknown = signatures(
        "export", "--campaign", "nope", "--for-target", "--out", str(tmp_path / "n.csv"), env=env
    )
    assert (unknown.returncode, unknown.stderr) == (2, "campaign nope is unknown\n")
    unwritable = tmp_path / "delivery.csv" / "x.pdf"  # under a file
    refused = signatures(
        "export", "--campaign", CAMPAIGN.slug, "--for-target", "--format", "pdf",
        "--out", str(unwritable), env=env,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"cannot write {unwritable}: ")
    assert len(refused.stderr.splitlines()) == 1 and refused.stdout == ""
    to_stdout = signatures("export", "--campaign", CAMPAIGN.slug, "--for-target", env=env)
    assert to_stdout.returncode == 2 and "--out FILE" in to_stdout.stderr
    pdf_plain = signatures("export", "--campaign", CAMPAIGN.slug, "--format", "pdf", env=env)
    assert (pdf_plain.returncode, pdf_plain.stderr) == (2, "--format pdf needs --for-target\n")

    # without --for-target, the export is as it was: one header, names, no byte-order mark
    plain = tmp_path / "plain.csv"
    done = signatures("export", "--campaign", CAMPAIGN.slug, "--out", str(plain), env=env)
    assert done.returncode == 0, done.stderr
    lines = plain.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "first_name,last_name,country,signed_on"
    assert lines[1] == "Giulia,Rossi,IT,2026-11-30"
    assert done.stdout == ""
