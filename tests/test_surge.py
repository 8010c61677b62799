"""The API maximum's search: more connections until p99 passes the limit, no further."""

from __future__ import annotations

import pytest

from bench import surge
from bench.surge import P99_LIMIT_MS, WRK_CONNECTIONS, WrkResult, run_wrk_steps


def test_steps_stop_at_the_first_saturated_step(monkeypatch: pytest.MonkeyPatch) -> None:
    p99 = {8: 10.0, 16: 11.0, 32: 15.0, 64: 40.0, 96: P99_LIMIT_MS, 128: 5.0}

    def fake_wrk(host: str, port: int, connections: int) -> WrkResult:
        return WrkResult(connections, connections * 50.0, p99[connections], 0)

    monkeypatch.setattr(surge, "run_wrk", fake_wrk)
    steps = run_wrk_steps("127.0.0.1", 1)
    assert [s.connections for s in steps] == [8, 16, 32, 64, 96]


def test_steps_go_on_to_the_last_while_under_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(surge, "run_wrk", lambda h, p, c: WrkResult(c, float(c), 1.0, 0))
    assert [s.connections for s in run_wrk_steps("127.0.0.1", 1)] == list(WRK_CONNECTIONS)
