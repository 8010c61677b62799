"""Failpoints: the specification's parsing, and each action, enabled only by the variable."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from consumers.count import CountHandler
from consumers.mail import MailHandler
from consumers.persist import PersistHandler
from runtime import failpoints
from runtime.failpoints import Action, FailpointError, Kind, failpoint, parse, parse_action

ROOT = Path(__file__).resolve().parent.parent
PACKAGES: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
    "packages"
]  # the code that is installed, so a new package is read too


def test_a_specification_names_one_action_per_failpoint() -> None:
    assert parse(
        "persist.before_db_commit=sleep:2, persist.after_db_commit = kill ,"
        "count.before_offset_commit=raise,count.before_publish=sleep:0.25,"
        "mail.after_send=1*stop,persist.before_offset_commit=3*sleep:1,"
        "sign.after_broker_ack=1*timeout"
    ) == {
        "persist.before_db_commit": Action(Kind.SLEEP, 2.0),
        "persist.after_db_commit": Action(Kind.KILL),
        "count.before_offset_commit": Action(Kind.RAISE),
        "count.before_publish": Action(Kind.SLEEP, 0.25),
        "mail.after_send": Action(Kind.STOP, times=1),
        "persist.before_offset_commit": Action(Kind.SLEEP, 1.0, times=3),
        "sign.after_broker_ack": Action(Kind.TIMEOUT, times=1),
    }


@pytest.mark.parametrize("spec", ["", " ", ",", " , ,"])
def test_an_empty_specification_enables_nothing(spec: str) -> None:
    assert parse(spec) == {}


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("persist.after_db_commit", "expected name=action"),
        ("=kill", "expected name=action"),
        ("mail.after_send=explode", "unknown action"),
        ("mail.after_send=", "unknown action"),
        ("mail.after_send=kill:3", "unknown action"),
        ("mail.after_send=sleep", "sleep needs seconds"),
        ("mail.after_send=sleep:soon", "sleep needs seconds"),
        ("mail.after_send=sleep:-1", "finite number of seconds"),
        ("mail.after_send=sleep:nan", "finite number of seconds"),
        ("mail.after_send=sleep:inf", "finite number of seconds"),
        ("mail.after_send=stop:1", "unknown action"),
        ("mail.after_send=0*kill", "whole number N >= 1"),
        ("mail.after_send=-1*kill", "whole number N >= 1"),
        ("mail.after_send=once*kill", "whole number N >= 1"),
        ("mail.after_send=*kill", "whole number N >= 1"),
        ("mail.after_send=1*", "unknown action"),
        ("mail.after_send=1*sleep", "sleep needs seconds"),
        ("mail.after_send=timeout:1", "unknown action"),
        ("persist.before_commit=kill", "unknown failpoint 'persist.before_commit'"),
        ("Persist.before_db_commit=kill", "unknown failpoint"),
        ("persist.before_db_commit=kill,count.before_publlish=raise", "unknown failpoint"),
        ("p=kill", "unknown failpoint 'p'"),
    ],
)
def test_a_malformed_specification_is_an_error_naming_the_variable(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        parse(spec)
    assert str(caught.value).startswith("SIGNATURES_FAILPOINTS: ")


def test_actions_read_back_as_written() -> None:
    written = ["kill", "raise", "stop", "timeout", "sleep:2", "sleep:0.5", "1*stop", "2*sleep:3"]
    assert [str(parse_action(action)) for action in written] == written


def test_without_the_variable_no_failpoint_fires(failpoints_env: pytest.MonkeyPatch) -> None:
    failpoints_env.delenv(failpoints.ENV, raising=False)
    failpoint("persist.before_db_commit")  # returns: nothing is enabled
    assert failpoints._active() == {}


def test_raise_fires_only_at_its_own_name(failpoints_env: pytest.MonkeyPatch) -> None:
    failpoints_env.setenv(failpoints.ENV, "persist.after_db_commit=raise")
    failpoint("persist.before_db_commit")
    with pytest.raises(FailpointError, match=r"^persist\.after_db_commit$"):
        failpoint("persist.after_db_commit")


def test_sleep_blocks_the_caller_for_its_seconds(failpoints_env: pytest.MonkeyPatch) -> None:
    failpoints_env.setenv(failpoints.ENV, "persist.before_db_commit=sleep:0.2")
    started = time.monotonic()
    failpoint("persist.before_db_commit")
    assert time.monotonic() - started >= 0.2


def test_timeout_raises_what_a_lost_answer_raises(failpoints_env: pytest.MonkeyPatch) -> None:
    failpoints_env.setenv(failpoints.ENV, "sign.after_broker_ack=timeout")
    with pytest.raises(TimeoutError, match=r"^sign\.after_broker_ack$"):
        failpoint("sign.after_broker_ack")


def test_a_failpoint_the_registry_forgot_is_an_error_once_any_is_enabled(
    failpoints_env: pytest.MonkeyPatch,
) -> None:
    failpoint("persist.not_registered")  # nothing enabled: production pays one lookup
    failpoints._active.cache_clear()
    failpoints_env.setenv(failpoints.ENV, "persist.before_db_commit=raise")
    with pytest.raises(ValueError, match=r"'persist\.not_registered' is not in"):
        failpoint("persist.not_registered")


def names_in_code() -> set[str]:
    """Every failpoint name the code can reach, read from its source: each call of
    `failpoint(...)` in the packages, with a literal name or, in the consume loop,
    `f"{handler.name}.suffix"` for every handler the workers run."""
    handlers = [PersistHandler.name, CountHandler.name, MailHandler.name]
    names: set[str] = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if not (isinstance(node, ast.Call) and _called(node.func) == "failpoint"):
                    continue
                [argument] = node.args
                match argument:
                    case ast.Constant(value=str(name)):
                        names.add(name)
                    case ast.JoinedStr(
                        values=[
                            ast.FormattedValue(value=ast.Attribute(attr="name")),
                            ast.Constant(value=str(suffix)),
                        ]
                    ):
                        names.update(f"{handler}{suffix}" for handler in handlers)
                    case _:
                        raise AssertionError(f"{path}:{node.lineno}: a name this cannot read")
    return names


def _called(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


def test_the_registry_lists_every_failpoint_in_the_code_and_nothing_else() -> None:
    found = names_in_code()
    assert "persist.before_db_commit" in found  # the scan does see the calls
    assert found == set(failpoints.KNOWN)


def test_a_counted_failpoint_fires_its_first_times_only(failpoints_env: pytest.MonkeyPatch) -> None:
    failpoints_env.setenv(failpoints.ENV, "count.before_offset_commit=2*raise")
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
    script = (
        "from runtime.failpoints import failpoint;failpoint('mail.after_send'); print('continued')"
    )
    env = {**os.environ, "SIGNATURES_FAILPOINTS": "mail.after_send=1*stop"}
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
