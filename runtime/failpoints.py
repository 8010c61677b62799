"""Named failpoints: exact moments where tests inject a crash.

Enabled only by `SIGNATURES_FAILPOINTS`, e.g. `persist.after_db_commit=kill`; unset in
production, where `failpoint()` is a dictionary lookup that finds nothing. Actions:
`kill` (SIGKILL this process: no cleanup, no goodbye to the broker) and `raise`.
"""

from __future__ import annotations

import functools
import os
import signal

ENV = "SIGNATURES_FAILPOINTS"


class FailpointError(RuntimeError):
    pass


@functools.cache
def _active() -> dict[str, str]:
    spec = os.environ.get(ENV, "")
    pairs = (item.split("=", 1) for item in spec.split(",") if "=" in item)
    return {name.strip(): action.strip() for name, action in pairs}


def failpoint(name: str) -> None:
    action = _active().get(name)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise FailpointError(name)
