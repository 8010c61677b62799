"""`signatures import`: signatures collected elsewhere (paper forms, a partner's export).

CSV (a header row naming the fields; `consent` as a form checkbox: yes/true/1/on or
no/false/0/empty) or NDJSON (one JSON object per line, as the partner batch endpoint
takes). Every line is checked at the edge exactly like an HTTP submission; lines that
fail are reported by line number, field and reason code (never their values) and are not
sent. The rest go to the input topic with source `import:<name>` and a submission id
derived from the import name, campaign and line number, so importing the same file again
stores nobody twice (and a repeated person is a duplicate anyway).
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer

from ingest.edge import EdgeRejection, from_form, from_json_object
from runtime.kafka import OutgoingRecord, produce_many
from schemas.strict_json import load_json
from schemas.submission import FieldError, Submission

IMPORT_NAMESPACE = uuid.UUID("6f1c4d8e-2b7a-4c1e-9f0d-3a5b7c9e1f20")
CHUNK = 5_000
_NAME = re.compile(r"[^a-z0-9-]+")


def import_name(path: Path) -> str:
    """A source name from the file name: lower case, letters, digits and dashes."""
    name = _NAME.sub("-", path.stem.lower()).strip("-")[:63]
    return name if name and name[0].isalnum() else f"file-{name}".strip("-")


@dataclass
class ImportResult:
    lines: int = 0
    sent: int = 0
    refused: list[tuple[int, list[FieldError]]] = field(default_factory=list)


def _rows(path: Path) -> Iterator[tuple[int, dict[str, object] | None]]:
    """(line number, fields) per data line; None for a line that is not a JSON object."""
    if path.suffix.lower() in (".ndjson", ".jsonl"):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    value = load_json(line.encode())
                except ValueError:  # JsonRefused too: duplicate keys, NaN, deep nesting
                    value = None
                yield number, value if isinstance(value, dict) else None
        return
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            yield reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if k}


def _check(
    fields: dict[str, object] | None, *, csv_row: bool, campaign: str, source: str, line: int
) -> Submission | EdgeRejection:
    if fields is None:
        return from_json_object(None, campaign=campaign, source=source)
    values = {k: v for k, v in fields.items() if k != "submission_id"}
    values["submission_id"] = str(uuid.uuid5(IMPORT_NAMESPACE, f"{source}\n{campaign}\n{line}"))
    if csv_row:
        return from_form({k: str(v) for k, v in values.items()}, campaign=campaign, source=source)
    return from_json_object(values, campaign=campaign, source=source)


def count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


async def import_file(
    producer: AIOKafkaProducer,
    topic: str,
    path: Path,
    *,
    campaign: str,
    name: str | None = None,
    progress: Callable[[int], None] = lambda _n: None,
) -> ImportResult:
    """Check every line, send the good ones in chunks; the broker acknowledges each chunk."""
    source = f"import:{name or import_name(path)}"
    csv_file = path.suffix.lower() not in (".ndjson", ".jsonl")
    result = ImportResult()
    chunk: list[OutgoingRecord] = []
    reported = 0
    for line, fields in _rows(path):
        result.lines += 1
        checked = _check(fields, csv_row=csv_file, campaign=campaign, source=source, line=line)
        if isinstance(checked, EdgeRejection):
            result.refused.append((line, checked.errors))
        else:
            chunk.append((checked.submission_id.bytes, checked.model_dump_json().encode(), []))
        if len(chunk) >= CHUNK:
            await produce_many(producer, topic, chunk)
            result.sent += len(chunk)
            chunk = []
            progress(result.lines - reported)
            reported = result.lines
    await produce_many(producer, topic, chunk)
    result.sent += len(chunk)
    progress(result.lines - reported)
    return result


def refusal_report(result: ImportResult, limit: int = 20) -> str:
    """The refused lines, by number, field and reason code: no value is ever shown."""
    out = io.StringIO()
    for line, errors in result.refused[:limit]:
        reasons = ", ".join(f"{e.field}: {e.reason.value}" for e in errors)
        out.write(f"line {line}: {reasons}\n")
    if len(result.refused) > limit:
        out.write(f"… and {len(result.refused) - limit} more refused lines\n")
    return out.getvalue()
