"""Failpoints: the specification's parsing, and each action, enabled only by the variable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import failpoints
from runtime.failpoints import Action, FailpointError, Kind, failpoint, parse, parse_action


@pytest.fixture
def enabled(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The variable set per test; the cached specification forgotten before and after."""
    failpoints._active.cache_clear()
    failpoints._fired.clear()
    yield monkeypatch
    monkeypatch.delenv(failpoints.ENV, raising=False)
    failpoints._active.cache_clear()
    failpoints._fired.clear()


def test_a_specification_names_one_action_per_failpoint() -> None:
    assert parse(
        "persist.before_db_commit=sleep:2, persist.after_db_commit = kill ,"
        "count.before_offset_commit=raise,x=sleep:0.25,y=1*stop,z=3*sleep:1"
    ) == {
        "persist.before_db_commit": Action(Kind.SLEEP, 2.0),
        "persist.after_db_commit": Action(Kind.KILL),
        "count.before_offset_commit": Action(Kind.RAISE),
        "x": Action(Kind.SLEEP, 0.25),
        "y": Action(Kind.STOP, times=1),
        "z": Action(Kind.SLEEP, 1.0, times=3),
    }


@pytest.mark.parametrize("spec", ["", " ", ",", " , ,"])
def test_an_empty_specification_enables_nothing(spec: str) -> None:
    assert parse(spec) == {}


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("persist.after_db_commit", "expected name=action"),
        ("=kill", "expected name=action"),
        ("p=explode", "unknown action"),
        ("p=", "unknown action"),
        ("p=kill:3", "unknown action"),
        ("p=sleep", "sleep needs seconds"),
        ("p=sleep:soon", "sleep needs seconds"),
        ("p=sleep:-1", "finite number of seconds"),
        ("p=sleep:nan", "finite number of seconds"),
        ("p=sleep:inf", "finite number of seconds"),
        ("p=stop:1", "unknown action"),
        ("p=0*kill", "whole number N >= 1"),
        ("p=-1*kill", "whole number N >= 1"),
        ("p=once*kill", "whole number N >= 1"),
        ("p=*kill", "whole number N >= 1"),
        ("p=1*", "unknown action"),
        ("p=1*sleep", "sleep needs seconds"),
    ],
)
def test_a_malformed_specification_is_an_error_naming_the_variable(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        parse(spec)
    assert str(caught.value).startswith("SIGNATURES_FAILPOINTS: ")


def test_actions_read_back_as_written() -> None:
    written = ["kill", "raise", "stop", "sleep:2", "sleep:0.5", "1*stop", "2*sleep:3"]
    assert [str(parse_action(action)) for action in written] == written


def test_without_the_variable_no_failpoint_fires(enabled: pytest.MonkeyPatch) -> None:
    enabled.delenv(failpoints.ENV, raising=False)
    failpoint("persist.before_db_commit")  # returns: nothing is enabled
    assert failpoints._active() == {}


def test_raise_fires_only_at_its_own_name(enabled: pytest.MonkeyPatch) -> None:
    enabled.setenv(failpoints.ENV, "persist.after_db_commit=raise")
    failpoint("persist.before_db_commit")
    with pytest.raises(FailpointError, match=r"^persist\.after_db_commit$"):
        failpoint("persist.after_db_commit")


def test_sleep_blocks_the_caller_for_its_seconds(enabled: pytest.MonkeyPatch) -> None:
    enabled.setenv(failpoints.ENV, "persist.before_db_commit=sleep:0.2")
    started = time.monotonic()
    failpoint("persist.before_db_commit")
    assert time.monotonic() - started >= 0.2


def test_a_counted_failpoint_fires_its_first_times_only(enabled: pytest.MonkeyPatch) -> None:
    enabled.setenv(failpoints.ENV, "count.before_offset_commit=2*raise")
    for _ in range(2):
        with pytest.raises(FailpointError):
            failpoint("count.before_offset_commit")
    failpoint("count.before_offset_commit")  # disarmed
    failpoint("count.before_offset_commit")


def process_state(pid: int) -> str:
    """R, S, T (stopped)… from /proc: the field after the command name in parentheses."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.slow
def test_stop_freezes_the_process_until_it_is_continued() -> None:
    script = "from runtime.failpoints import failpoint; failpoint('p'); print('continued')"
    env = {**os.environ, "SIGNATURES_FAILPOINTS": "p=1*stop"}
    child = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while process_state(child.pid) != "T":
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGCONT)
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0
    said = out.decode().splitlines()  # structlog, not configured here, writes to stdout
    assert "failpoint" in said[0] and "action=1*stop" in said[0]
    assert said[1:] == ["continued"]
