"""File import into the pipeline, and the export for the campaign's target."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from cli.main import app
from consumers.service import WorkerKind, run_worker
from ingest.importer import import_file, import_name, refusal_report
from ops.export import export_csv, safe_cell
from runtime.campaigns import counted_rows, create_campaign
from runtime.kafka import make_producer
from runtime.settings import Settings, settings_env
from tests.helpers import CAMPAIGN, decrypted, keys_for_tests

CSV = """first_name,last_name,email,country,consent,postcode
Giulia,Rossi,giulia.rossi.imp@example.org,IT,yes,00100
=HYPERLINK("http://x"),Formula,formula.imp@example.org,FR,,
<b>Anna</b>,+Markup,anna.imp@example.org,DE,no,
Nobody,Valid,not-an-email,IT,yes,
Ivan,Petrov,ivan.imp@example.org,XX,1,
Ana,Souza,ANA.SOUZA.IMP@EXAMPLE.ORG,BR,true,
Ana,Souza,ana.souza.imp@example.org,BR,true,
"""


def test_formula_cells_are_neutralised() -> None:
    assert [safe_cell(v) for v in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "Anna", "O'Neil"]] == [
        "'=1+1", "'+1", "'-1", "'@SUM(A1)", "'\tx", "Anna", "O'Neil",
    ]  # fmt: skip


def test_import_name_is_a_slug() -> None:
    assert import_name(Path("Paper Forms (Rome) 2026.csv")) == "paper-forms-rome-2026"


async def drain(settings: Settings) -> None:
    for kind in (WorkerKind.PERSIST, WorkerKind.COUNT):
        await asyncio.wait_for(run_worker(kind, settings, asyncio.Event(), drain=True), 90)


async def import_once(settings: Settings, path: Path) -> tuple[int, int, str]:
    producer = make_producer(settings)
    await producer.start()
    try:
        result = await import_file(producer, settings.topic_submitted, path, campaign=CAMPAIGN.slug)
    finally:
        await producer.stop()
    return result.sent, len(result.refused), refusal_report(result)


@pytest.mark.integration
async def test_import_checks_lines_sends_the_rest_and_is_idempotent(
    settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    await create_campaign(pool, CAMPAIGN)
    path = tmp_path / "paper-forms.csv"
    path.write_text(CSV, encoding="utf-8")

    sent, refused, report = await import_once(settings, path)
    assert (sent, refused) == (5, 2)
    assert report == "line 5: email: invalid_email\nline 6: country: invalid_country\n"
    await drain(settings)
    assert (await counted_rows(pool))[CAMPAIGN.slug] == 4  # Ana twice is one person
    rows = await decrypted(pool)
    by_name = {r["first_name"]: r for r in rows}
    assert by_name['=HYPERLINK("http://x")']["consent"] is False  # stored as data
    assert by_name["<b>Anna</b>"]["last_name"] == "+Markup"
    assert by_name["Giulia"]["consent"] is True
    assert {r["source"] for r in rows} == {"import:paper-forms"}

    assert (await import_once(settings, path))[:2] == (5, 2)  # the same file again
    await drain(settings)
    assert (await counted_rows(pool))[CAMPAIGN.slug] == 4
    assert await pool.fetchval("SELECT duplicates FROM campaign_totals") == 1

    out = io.StringIO()
    assert await export_csv(pool, CAMPAIGN.slug, out, keys_for_tests()) == 4
    exported = list(csv.reader(io.StringIO(out.getvalue())))
    assert exported[0] == ["first_name", "last_name", "country", "signed_on"]
    cells = {tuple(row[:3]) for row in exported[1:]}
    assert ('\'=HYPERLINK("http://x")', "Formula", "FR") in cells
    assert ("<b>Anna</b>", "'+Markup", "DE") in cells
    assert "@" not in out.getvalue() and "00100" not in out.getvalue()


@pytest.mark.integration
@pytest.mark.slow
def test_cli_import_and_export(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    ndjson = tmp_path / "partner.ndjson"
    people = [
        {"first_name": "Zoë", "last_name": "Martin", "email": f"zoe.{n}@example.org",
         "country": "FR", "consent": True}
        for n in range(3)
    ]  # fmt: skip
    ndjson.write_text("\n".join([*map(json.dumps, people), "[1, 2]", ""]), encoding="utf-8")

    unknown = runner.invoke(app, ["import", str(ndjson), "--campaign", "nope"])
    assert unknown.exit_code == 2
    assert "campaign nope is unknown" in unknown.output
    create = [
        "campaign",
        "create",
        "--slug",
        CAMPAIGN.slug,
        "--title",
        "T",
        "--target",
        "X",
        "--confirmation",
        "off",
    ]
    assert runner.invoke(app, [*create, "--goal", "10"]).exit_code == 0
    imported = runner.invoke(app, ["import", str(ndjson), "--campaign", CAMPAIGN.slug])
    assert imported.exit_code == 1  # one line refused
    assert "4 lines: 3 sent" in imported.output
    assert "line 4: (record): malformed_json" in imported.output
    assert "zoe." not in imported.output
    asyncio.run(drain(settings))
    target = tmp_path / "out.csv"
    exported = runner.invoke(app, ["export", "--campaign", CAMPAIGN.slug, "--out", str(target)])
    assert exported.exit_code == 0, exported.output
    assert "3 signatures of" in exported.output
    assert target.read_text(encoding="utf-8").count("Zoë,Martin,FR") == 3
