"""The JSON log line: one valid JSON object whatever the values."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from runtime.logs import _json_line


def _fallback(value: object) -> str:
    return repr(value)


def test_a_line_is_compact_json_with_ids_and_times_as_strings() -> None:
    sid = uuid.uuid4()
    at = datetime(2026, 11, 26, 5, 0, tzinfo=UTC)
    line = _json_line({"event": "batch", "id": sid, "at": at, "n": 3}, default=_fallback)
    assert json.loads(line) == {
        "event": "batch",
        "id": str(sid),
        "at": "2026-11-26T05:00:00+00:00",
        "n": 3,
    }
    assert "\n" not in line


def test_what_orjson_refuses_is_still_one_json_line() -> None:
    line = _json_line({"event": "big", "n": 2**70, "thing": object()}, default=_fallback)
    parsed = json.loads(line)
    assert parsed["n"] == 2**70
    assert parsed["thing"].startswith("<object object")
