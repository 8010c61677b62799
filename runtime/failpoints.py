"""Named failpoints: exact moments where tests inject a crash or a stall.

Enabled only by `SIGNATURES_FAILPOINTS`, e.g. `persist.after_db_commit=kill` or
`persist.before_db_commit=sleep:2,persist.after_db_commit=1*stop`; unset in production,
where `failpoint()` is a dictionary lookup that finds nothing. Actions:

- `kill`: SIGKILL this process (no cleanup, no goodbye to the broker);
- `raise`: raise FailpointError;
- `stop`: SIGSTOP this process: it freezes right there, as in a long pause of its host,
  until something sends it SIGCONT;
- `sleep:SECONDS`: block the whole process for that long, as a slow synchronous step
  would: the event loop stalls, so no heartbeat is sent and a signal is handled only
  afterwards. Keep it under the session timeout unless the point is to be evicted from
  the consumer group;
- `timeout`: raise TimeoutError, as a call whose answer never came would: the caller's
  own handling of a lost answer runs (after `sign.after_broker_ack`: a 503 for a
  submission the broker has).

`N*` before an action fires it the first N times only (`1*stop`: once), so that a worker
carries on normally afterwards. A failpoint that fires logs `failpoint` with its name and
action first, so a test can tell that the process got there. A malformed specification
is an error, and so is a name that is not in `KNOWN` (every place in the code that calls
`failpoint`, and nothing else): a typo must not make a test pass without its fault.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from runtime.logs import get_logger

ENV = "SIGNATURES_FAILPOINTS"

log = get_logger("runtime.failpoints")
_fired: Counter[str] = Counter()

# Every failpoint in the code, and where it is. A test checks that the code calls these
# and only these (tests/test_failpoints.py), so a specification can name nothing else.
KNOWN: Mapping[str, str] = {
    "persist.before_db_commit": "inside the batch's transaction, every write done, before COMMIT",
    "persist.after_db_commit": "the batch's transaction committed, nothing produced yet",
    "persist.before_offset_commit": "the batch done, its Kafka offsets not yet committed",
    "count.before_publish": "the totals read from the database, not yet sent",
    "count.before_offset_commit": "the batch's totals published, offsets not yet committed",
    "mail.after_send": "a message handed to the mail server, its sending not yet recorded",
    "mail.before_offset_commit": "the batch's mail queued, offsets not yet committed",
    "sign.after_broker_ack": "the broker acknowledged a submission, the API has not answered",
}


class FailpointError(RuntimeError):
    pass


class Kind(StrEnum):
    KILL = "kill"
    RAISE = "raise"
    STOP = "stop"
    SLEEP = "sleep"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Action:
    kind: Kind
    seconds: float = 0.0
    times: int | None = None  # None: every time

    def __str__(self) -> str:
        action = f"{self.kind}:{self.seconds:g}" if self.kind is Kind.SLEEP else str(self.kind)
        return action if self.times is None else f"{self.times}*{action}"


def parse_action(text: str) -> Action:
    """`[N*]kill`, `[N*]raise`, `[N*]stop`, `[N*]timeout` or `[N*]sleep:SECONDS`."""
    count, star, rest = text.strip().partition("*")
    if not star:
        return _parse_kind(text)
    if not count.strip().isdecimal() or int(count) < 1:
        raise ValueError(f"{ENV}: N* needs a whole number N >= 1 (got {text.strip()!r})")
    return _parse_kind(rest, times=int(count))


def _parse_kind(text: str, times: int | None = None) -> Action:
    kind, _, argument = text.strip().partition(":")
    if kind == Kind.SLEEP:
        try:
            seconds = float(argument)
        except ValueError:
            raise ValueError(f"{ENV}: sleep needs seconds, e.g. sleep:2 (got {text!r})") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"{ENV}: sleep needs a finite number of seconds >= 0 (got {text!r})")
        return Action(Kind.SLEEP, seconds, times)
    if kind in (Kind.KILL, Kind.RAISE, Kind.STOP, Kind.TIMEOUT) and not argument:
        return Action(Kind(kind), times=times)
    raise ValueError(
        f"{ENV}: unknown action {text!r} (kill, raise, stop, timeout or sleep:SECONDS)"
    )


def parse(spec: str) -> dict[str, Action]:
    """`name=action[,name=action…]`; blank items are ignored, anything else must parse,
    and every name must be a known failpoint."""
    actions: dict[str, Action] = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        name, equals, action = item.partition("=")
        if not equals or not name.strip():
            raise ValueError(f"{ENV}: expected name=action, got {item.strip()!r}")
        if name.strip() not in KNOWN:
            raise ValueError(
                f"{ENV}: unknown failpoint {name.strip()!r} (known: {', '.join(sorted(KNOWN))})"
            )
        actions[name.strip()] = parse_action(action)
    return actions


@functools.cache
def _active() -> dict[str, Action]:
    return parse(os.environ.get(ENV, ""))


def failpoint(name: str) -> None:
    active = _active()
    if not active:  # production: nothing enabled
        return
    if name not in KNOWN:  # a place in the code that the registry forgot
        raise ValueError(f"{ENV}: failpoint {name!r} is not in runtime.failpoints.KNOWN")
    action = active.get(name)
    if action is None or (action.times is not None and _fired[name] >= action.times):
        return
    _fired[name] += 1
    log.warning("failpoint", name=name, action=str(action))
    if action.kind is Kind.KILL:
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.kind is Kind.RAISE:
        raise FailpointError(name)
    elif action.kind is Kind.STOP:
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action.kind is Kind.TIMEOUT:
        raise TimeoutError(name)
    else:
        time.sleep(action.seconds)
