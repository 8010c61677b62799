"""Real `signatures` processes: a command run to its end, and workers for the fault tests,
each worker logging to its own file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.failpoints import ENV as FAILPOINTS
from runtime.settings import Settings, settings_env

POLL_S = 0.05
JOIN_TIMEOUT_S = 90.0  # a first join takes about 5 s, a rebalance 6-8 s; the machine is busy


def cli_env(database_url: str, state_dir: Path, **extra: str) -> dict[str, str]:
    """The caller's environment (KAFKA_BOOTSTRAP_SERVERS included, if a cluster is set),
    with this test's database and state directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNATURES_")}
    env.update(
        {
            "DATABASE_URL": database_url,
            "SIGNATURES_STATE_DIR": str(state_dir),
            "SIGNATURES_LOG_FORMAT": "json",
            **extra,
        }
    )
    return env


def signatures(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """One `signatures` command run to its end, as a user runs it, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class WorkerProcess:
    """One worker process, its stdout and stderr in a log file of JSON lines."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    def lines(self, event: str | None = None) -> list[dict[str, Any]]:
        found = []
        for text in self.log.read_text(errors="replace").splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                line = {"event": "(not json)", "text": text}
            if isinstance(line, dict) and (event is None or line.get("event") == event):
                found.append(line)
        return found

    def outcome(self, key: str) -> int:
        """One outcome summed over the process's batch lines (inserted, redelivered, …)."""
        return sum(int(line.get(key, 0)) for line in self.lines("batch"))

    def events(self) -> list[str]:
        return [str(line.get("event")) for line in self.lines()]

    def retries(self) -> list[str]:
        """The error class of every batch this process retried."""
        return [str(line.get("error")) for line in self.lines("batch_retry")]

    def mark(self) -> int:
        """How many lines it has logged so far: `wait_for(…, since=mark)` reads only later ones."""
        return len(self.lines())

    def assigned(self) -> set[int]:
        """The partitions it owns now, by its latest assignment and revocation lines."""
        owned: set[int] = set()
        for line in self.lines():
            if line.get("event") == "partitions_revoked":
                owned = set()
            elif line.get("event") == "partitions_assigned":
                owned = {int(p.rsplit(":", 1)[1]) for p in line["partitions"]}
        return owned

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def wait_for(
        self,
        event: str,
        matching: Callable[[dict[str, Any]], bool] = lambda _: True,
        *,
        since: int = 0,
        timeout: float = JOIN_TIMEOUT_S,
    ) -> dict[str, Any]:
        """The first log line of that event that matches; fails if the process exits first."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines()[since:]:
                    if line.get("event") == event and matching(line):
                        return line
                if not self.running:
                    raise AssertionError(f"{self.name} exited with {self.process.returncode}")
                await asyncio.sleep(POLL_S)

    async def wait_for_retries(self, count: int, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.retries()) < count:
                assert self.running, f"{self.name} exited with {self.process.returncode}"
                await asyncio.sleep(POLL_S)

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def exit_code(self, timeout: float = 60.0) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then its exit code (0 is a clean stop)."""
        self.signal(signal.SIGTERM)
        return await self.exit_code(timeout)


class Workers:
    """Starts worker processes for one test; whatever still runs at the end is killed."""

    def __init__(self, log_dir: Path, settings: Settings | None = None) -> None:
        self.log_dir = log_dir
        self.settings = settings
        self.started: list[WorkerProcess] = []

    async def start(
        self,
        kind: str,
        name: str,
        settings: Settings | None = None,
        *,
        drain: bool = False,
        failpoints: str = "",
    ) -> WorkerProcess:
        chosen = settings or self.settings
        assert chosen is not None, "give the settings here or to Workers"
        env = {**os.environ, **settings_env(chosen)}
        env.pop(FAILPOINTS, None)
        if failpoints:
            env[FAILPOINTS] = failpoints
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cli", "worker", kind,
                *(["--drain"] if drain else []),
                env=env, stdin=asyncio.subprocess.DEVNULL, stdout=output,
                stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        worker = WorkerProcess(name, process, log)
        self.started.append(worker)
        return worker

    async def run_to_drain(
        self, kind: str, name: str, *, settings: Settings | None = None
    ) -> WorkerProcess:
        """A worker that stops once it has caught up; it must exit cleanly."""
        worker = await self.start(kind, name, settings, drain=True)
        assert await worker.exit_code(timeout=120) == 0, worker.events()[-5:]
        return worker

    @property
    def logs(self) -> list[Path]:
        return [worker.log for worker in self.started]

    async def stop_all(self) -> None:
        """Kill whatever still runs, a frozen (SIGSTOPped) process included."""
        for worker in self.started:
            if worker.running:
                worker.signal(signal.SIGCONT)
                worker.signal(signal.SIGKILL)
                await worker.process.wait()
