"""The test tiers hold: a test does nothing its markers leave out.

`integration`: talks to PostgreSQL, the broker or Redis, or runs a program that is not
this project's (docker-compose, pg_dump, git, wrk, chromium). `slow`: starts or signals
processes (workers, the API, a broker of its own, any external program), injects faults,
or runs long. So `-m "not integration"` needs no service and `-m "not slow"` starts no process.

Two things keep the markers true. A test that uses a fixture of the real services
(`database_url`, `pool`, `settings`, `kafka_bootstrap`, or any fixture built on them) is
marked `integration` when collected. And while a test is set up and runs, an audit hook
(PEP 578) watches what the process does: a process started or signalled by a test not
marked `slow`, a program not this project's run by a test not marked `integration`, or a
connection to PostgreSQL, Redis or the test broker from a test not marked `integration`
fails that test, naming what it did. The session's broker, started once for every test,
is exempt while its fixture sets it up.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

# Fixtures of the real services: a test that uses one is an integration test.
SERVICE_FIXTURES = frozenset({"database_url", "pool", "settings", "kafka_bootstrap"})
REDIS_PORT = 6379

# Audit events (https://docs.python.org/3/library/audit_events.html) that start a process,
# and those that send one a signal.
_SPAWN = frozenset({
    "subprocess.Popen", "os.posix_spawn", "os.spawn", "os.exec", "os.fork", "os.forkpty",
    "os.system", "pty.spawn",
})  # fmt: skip
_SIGNAL = frozenset({"os.kill", "os.killpg"})
_OWN_PROGRAMS = (Path(sys.prefix).resolve(), Path(sys.executable).resolve())


@dataclass
class Watch:
    """What the test being set up or run may do, and what it did beyond that."""

    may_spawn: bool
    may_integrate: bool
    exempt: int = 0  # > 0 while a session-wide service fixture sets itself up
    did: list[str] = field(default_factory=list)

    def saw(self, event: str, args: tuple[Any, ...]) -> None:
        if self.exempt:
            return
        if event in _SPAWN:
            program = _program(event, args)
            if not self.may_spawn:
                self.did.append(f"started a process ({event}: {program}) but is not marked slow")
            if not self.may_integrate and not _own(program):
                self.did.append(f"ran {program}, not this project's, but is not integration")
        elif event in _SIGNAL and not self.may_spawn:
            self.did.append(f"sent signal {args[1]} to {args[0]} ({event}) but is not slow")
        elif event == "socket.connect" and not self.may_integrate:
            port = _port(args[1])
            if port in _service_ports:
                self.did.append(f"connected to port {port} but is not marked integration")


_watching: list[Watch] = []  # the test being set up or run; the audit hook is process-wide
_service_ports: set[int] = {REDIS_PORT}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _watching:
        return
    try:
        _watching[-1].saw(event, args)
    except (TypeError, ValueError, IndexError, OSError) as error:  # an odd spawn's arguments
        # a hook that raises would break the call it audits: fail the test instead
        _watching[-1].did.append(f"{event} with arguments the tier check cannot read: {error}")


def _program(event: str, args: tuple[Any, ...]) -> str:
    """The program an audited spawn runs, as named (or "(fork)")."""
    if event in {"os.fork", "os.forkpty"}:
        return "(fork)"
    if event == "os.system":  # (command,)
        return os.fsdecode(args[0]).split(maxsplit=1)[0] if args[0] else "?"
    if event == "subprocess.Popen":  # (executable, args, cwd, env)
        program = args[0] if args[0] is not None else args[1]
    elif event == "os.spawn":  # (mode, path, args, env)
        program = args[1]
    else:  # os.exec, os.posix_spawn: (path, argv, env); pty.spawn: (argv,)
        program = args[0]
    if not isinstance(program, str | bytes | os.PathLike):
        program = program[0] if program else "?"
    return os.fsdecode(program)


def _own(program: str) -> bool:
    """Whether a program is this project's: its Python, or installed in its virtualenv."""
    if program == "(fork)":
        return True
    found = shutil.which(program) or program
    resolved = Path(found).resolve()
    return (
        resolved == _OWN_PROGRAMS[1]
        or resolved.is_relative_to(_OWN_PROGRAMS[0])
        or (Path(found).absolute().is_relative_to(_OWN_PROGRAMS[0]))
    )


def _port(address: object) -> int | None:
    if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
        return address[1]
    return None


def pytest_configure(config: pytest.Config) -> None:
    admin = os.environ.get("TEST_DATABASE_ADMIN_URL", "postgresql://127.0.0.1:5432/")
    _service_ports.add(urlsplit(admin).port or 5432)
    sys.addaudithook(_audit)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, Any, Any]:
    if fixturedef.argname != "kafka_bootstrap" or not _watching:
        return (yield)
    watch = _watching[-1]
    watch.exempt += 1
    try:
        bootstrap = yield
    finally:
        watch.exempt -= 1
    for address in str(bootstrap).split(","):
        if (port := urlsplit(f"//{address.strip()}").port) is not None:
            _service_ports.add(port)
    return bootstrap


def _watched(item: pytest.Item) -> Generator[None, Any, Any]:
    watch = Watch(
        may_spawn=item.get_closest_marker("slow") is not None,
        may_integrate=item.get_closest_marker("integration") is not None,
    )
    _watching.append(watch)
    try:
        result = yield
    except BaseException as failed:
        _fail_if_out_of_tier(item, watch.did, failed)
        raise
    finally:
        _watching.remove(watch)
    _fail_if_out_of_tier(item, watch.did, None)
    return result


def _fail_if_out_of_tier(item: pytest.Item, did: list[str], failed: BaseException | None) -> None:
    if did:
        message = f"{item.nodeid} is in the wrong tier: " + "; ".join(dict.fromkeys(did))
        raise pytest.fail.Exception(message, pytrace=False) from failed


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _watched(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _watched(item))
