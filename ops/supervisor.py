"""`signatures up`: everything on one machine, as child processes, stopped in order.

Broker (embedded unless KAFKA_BOOTSTRAP_SERVERS is set), migrations, topics, then the API,
the persist workers, the counter, the mail worker and the retention loop (anonymising
closed campaigns past their retention, every SIGNATURES_RETENTION_INTERVAL) as separate
processes (so they use both cores). Without SIGNATURES_SMTP_HOST the confirmation emails
go to a local SMTP server that keeps them as `.eml` files in the state directory
(`runtime.mailbox`), so the double opt-in works on one machine. Every child serves its
/metrics on a port of its own (any free one, or SIGNATURES_METRICS_PORT and the ports
after it, one per child) and logs it (`metrics_listening`). A child that dies is
restarted. Ctrl-C stops the API first, then the workers (each drains its batch in
flight), then the local mail server and the broker.

Each child is one of the CLI's own commands, run as `python -m cli ...` (a process, not an
import: the CLI sits above this package). It lives here rather than in cli/ because
`signatures demo` and the benchmarks start the same stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from ops.keys import campaigns, encrypt_plaintext
from runtime.broker import EmbeddedBroker
from runtime.db import apply_migrations, create_pool, ensure_database
from runtime.logs import get_logger
from runtime.mailbox import Mailbox
from runtime.pii import DataKeys
from runtime.roles import ensure_logins
from runtime.settings import Settings, settings_env
from runtime.topics import ensure_topics

log = get_logger("ops.supervisor")


@dataclass
class Child:
    name: str
    argv: list[str]
    log_file: IO[bytes] | None
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    env: dict[str, str] = field(default_factory=dict)  # on top of the stack's


_WITHOUT_MASTER_KEY = frozenset({"api", "counter"})


class Stack:
    """The running pipeline: where its API answers and how to stop it."""

    def __init__(
        self, settings: Settings, api_url: str, log_dir: Path | None, mail_dir: Path | None = None
    ) -> None:
        self.settings = settings
        self.api_url = api_url
        self.log_dir = log_dir
        self.mail_dir = mail_dir  # where the local mail server keeps the emails, if it runs
        self.children: list[Child] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    def env(self) -> dict[str, str]:
        return {**os.environ, **settings_env(self.settings)}

    async def spawn(self, name: str, *args: str) -> Child:
        log_file = None
        if self.log_dir is not None:
            log_file = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115, ASYNC230
        child = Child(name, [sys.executable, "-m", "cli", *args], log_file)
        if self.settings.metrics_port:  # one port each, from the one configured on
            port = self.settings.metrics_port + len(self.children)
            child.env["SIGNATURES_METRICS_PORT"] = str(port)
        await self._start(child)
        self.children.append(child)
        self._watchers.append(asyncio.create_task(self._watch(child)))
        return child

    async def _start(self, child: Child) -> None:
        env = {**self.env(), **child.env}
        if child.name in _WITHOUT_MASTER_KEY:  # they never read personal data
            for name in ("SIGNATURES_MASTER_KEY", "SIGNATURES_PREVIOUS_MASTER_KEY"):
                env.pop(name, None)
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=child.log_file,
            stderr=child.log_file,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops them in order
        )

    async def _watch(self, child: Child) -> None:
        while True:
            assert child.process is not None  # noqa: S101
            code = await child.process.wait()
            if self._stopping:
                return
            child.restarts += 1
            log.warning("child_exited", child=child.name, code=code, restarts=child.restarts)
            await asyncio.sleep(min(30.0, 0.5 * 2 ** min(child.restarts, 6)))
            if self._stopping:
                return
            await self._start(child)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    response = await client.get(f"{self.api_url}/readyz", timeout=2)
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the API at {self.api_url} is not ready after {timeout:.0f}s"
                    )
                await asyncio.sleep(0.2)

    async def stop_workers(self) -> None:
        """Stop the consumers, leave the API serving (the benchmark measures it alone)."""
        self._stopping = True
        for child in self.children:
            if child.name != "api":
                await _terminate(child, self.settings.shutdown_grace_s + 5)

    async def stop(self) -> None:
        self._stopping = True
        order = [c for c in self.children if c.name == "api"]
        order += [c for c in self.children if c.name.startswith("persist")]
        order += [c for c in self.children if c.name == "counter"]
        order += [c for c in self.children if c.name == "mail"]
        order += [c for c in self.children if c not in order]  # the retention loop
        for child in order:
            await _terminate(child, self.settings.shutdown_grace_s + 5)
        for watcher in self._watchers:
            watcher.cancel()
        for child in self.children:
            if child.log_file is not None:
                child.log_file.close()


async def _terminate(child: Child, timeout: float) -> None:
    process = child.process
    if process is None or process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        log.warning("child_killed", child=child.name)
        process.kill()
        await process.wait()


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings,
    *,
    host: str,
    port: int,
    persist_workers: int = 2,
    log_dir: Path | None = None,
) -> AsyncIterator[Stack]:
    """Bring the whole pipeline up; tear it down on exit."""
    api_url = f"http://{host}:{port}"
    if settings.public_url is None:  # the links in emails lead to this machine's API
        settings = settings.model_copy(update={"public_url": api_url})
    if settings.allowed_hosts is None and host not in settings.trusted_hosts() and ":" not in host:
        # the address it listens on answers too (the readiness checks below use it; an
        # IPv6 literal cannot be a Host name to allow)
        hosts = ",".join([*settings.trusted_hosts(), host])
        settings = settings.model_copy(update={"allowed_hosts": hosts})
    mailbox: Mailbox | None = None
    if not settings.smtp_host:
        mailbox = Mailbox(settings.state_dir / "mail")
        settings = settings.model_copy(update=_local_mail(settings, mailbox))
    settings.require_mail()
    settings.require_plaintext_for_embedded_broker()  # before anything starts
    broker: EmbeddedBroker | None = None
    if mailbox is not None:
        await asyncio.to_thread(mailbox.start)
        log.info("local_mailbox_started", directory=str(mailbox.directory), port=mailbox.port)
    if not settings.kafka_bootstrap_servers:
        broker = EmbeddedBroker(log_path=log_dir / "broker.log" if log_dir else None)
        try:
            await asyncio.to_thread(broker.start)
        except BaseException:
            if mailbox is not None:
                await asyncio.to_thread(mailbox.stop)
            raise
        settings = settings.model_copy(update={"kafka_bootstrap_servers": broker.bootstrap})
        log.info("embedded_broker_started", bootstrap=broker.bootstrap)
    stack = Stack(settings, api_url, log_dir, mailbox.directory if mailbox else None)
    try:
        if await ensure_database(settings.database_url):
            log.info("database_created")
        applied = await apply_migrations(settings.database_url)
        log.info("migrations", applied=applied)
        await _ensure_logins(settings)
        await encrypt_stored_plaintext(settings)
        await ensure_topics(settings, settings.kafka_bootstrap_servers or "")
        await stack.spawn("api", "api", "--host", host, "--port", str(port))
        for n in range(persist_workers):
            await stack.spawn(f"persist-{n + 1}", "worker", "persist")
        await stack.spawn("counter", "worker", "count")
        await stack.spawn("mail", "worker", "mail")
        # closed campaigns past their retention, every SIGNATURES_RETENTION_INTERVAL
        await stack.spawn("retention", "retention", "run", "--repeat")
        await stack.wait_ready()
        yield stack
    finally:
        await stack.stop()
        if mailbox is not None:
            await asyncio.to_thread(mailbox.stop)
        if broker is not None:
            await asyncio.to_thread(broker.stop)


async def _ensure_logins(settings: Settings) -> None:
    """The services' login users, for those given a database URL of their own."""
    for login in await ensure_logins(settings.database_url, settings):
        log.info("database_login", service=login.service, created=login.created)


async def encrypt_stored_plaintext(settings: Settings) -> None:
    """Rows kept from before encryption at rest existed are encrypted now (`keys encrypt`)."""
    keys = DataKeys(settings.require_master_keys())
    pool = await create_pool(settings.database_url, max_size=1)
    try:
        for campaign in await campaigns(pool, None):
            moved = await encrypt_plaintext(pool, keys, campaign)
            if moved is not None:
                log.info("plaintext_encrypted", campaign=campaign, rows=moved.rows)
    finally:
        await pool.close()


def _local_mail(settings: Settings, mailbox: Mailbox) -> dict[str, object]:
    """Settings that send every email to the local mail server, in plain SMTP."""
    return {
        "smtp_host": mailbox.host,
        "smtp_port": mailbox.port,
        "smtp_tls": "off",
        "smtp_username": None,
        "smtp_password": None,
        "mail_from": settings.mail_from or "petitions@localhost",
    }
