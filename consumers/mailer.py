"""The outbox sender: runs beside the consume loop in the mail worker process.

`mail_concurrency` senders each claim one due email at a time (`consumers.outbox`), send it
on their own reused SMTP connection, and record the outcome. Between the SMTP server's
acceptance and that record there is only the failpoint `mail.after_send`: a crash there
means the lease runs out and the email goes once more (at most one extra, never lost).

Transient failures (the server unreachable or slow, a 4xx) put the row back with an
exponential back-off, capped, and no other row waits for it; after `give_up_after_s` the
row is given up and the signature undeliverable. A 5xx to the recipient makes it
undeliverable at once. A sender whose server failed pauses before it claims again, so an
outage does not burn through the queue's attempts. A reminder task queues one reminder per
signature still pending `reminder_after_hours` after it was stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import asyncpg

from consumers import metrics
from consumers.emails import compose
from consumers.erasure_mail import compose_forget
from consumers.errors import TRANSIENT
from consumers.outbox import (
    Claim,
    NotSent,
    claim,
    queue_reminders,
    record_retry,
    record_sent,
    record_undeliverable,
)
from consumers.smtp import Failure, SmtpSession, classify
from runtime.db import Conn
from runtime.erasure_requests import next_request
from runtime.failpoints import failpoint
from runtime.logs import get_logger
from runtime.pii import DataKeys
from runtime.settings import Settings

log = get_logger("consumers.mailer")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a transiently failed email is tried again: 30 s, 1 min, 2 min, … at most an
    hour apart, for about a day (some thirty attempts)."""

    first_s: float = 30.0
    cap_s: float = 3600.0
    give_up_after_s: float = 24 * 3600.0

    def delay(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(self.first_s * 2 ** max(attempts - 1, 0), self.cap_s))


class Step(enum.Enum):
    IDLE = "nothing due"
    DONE = "one row handled"
    SERVER_DOWN = "the SMTP server failed: pause before the next claim"


class Mailer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        keys: DataKeys,
        retry: RetryPolicy | None = None,
    ) -> None:
        _, self._sender, self._public_url = settings.require_mail()
        self._pool = pool
        self._keys = keys  # the recipient's address is stored encrypted
        self._settings = settings
        self._retry = retry or RetryPolicy()
        self._deadline_s = 3 * settings.smtp_timeout_s  # connect and every command, at most
        # a lease outlives any send, so that a live sender's row is never taken from it
        self._lease = timedelta(seconds=self._deadline_s + 10)
        self._ttl = timedelta(hours=settings.confirmation_ttl_hours)
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()

    def nudge(self) -> None:
        """New emails were queued: idle senders look at once instead of at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Send until `stop`; the emails in flight then get the grace period to finish."""
        self._stop = stop
        tasks = [asyncio.create_task(self._send_forever()) for _ in range(self._concurrency)]
        tasks.append(asyncio.create_task(self._remind_forever()))
        tasks.append(asyncio.create_task(self._forget_requests_forever()))
        stopping = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({*tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:  # else a task failed: the others stop and its error is raised
                await asyncio.wait(tasks, timeout=self._settings.shutdown_grace_s)
        finally:
            stopping.cancel()
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result

    @property
    def _concurrency(self) -> int:
        return self._settings.mail_concurrency

    async def send_until_idle(self) -> None:
        """Send whatever is due now, one at a time (for `worker mail --drain`)."""
        session = SmtpSession(self._settings)
        try:
            while await self.send_next(session) is Step.DONE:
                pass
            while await self.answer_forget_request(session):
                pass
        finally:
            await session.close()

    async def _send_forever(self) -> None:
        session = SmtpSession(self._settings)
        try:
            while not self._stop.is_set():
                try:
                    step = await self.send_next(session)
                except TRANSIENT as exc:  # the database: the row is claimed again later
                    log.warning("mail_database_retry", error=type(exc).__name__)
                    step = Step.SERVER_DOWN
                if step is Step.SERVER_DOWN:
                    await session.close()
                    await self._sleep(min(self._retry.first_s, 30.0))
                elif step is Step.IDLE:
                    await session.close()  # do not hold the server's connection while idle
                    await self._wait_for_work()
        finally:
            await session.close()

    async def send_next(self, session: SmtpSession) -> Step:
        """Claim one due email, send it and record the outcome."""
        async with self._pool.acquire() as conn:
            claimed = await claim(
                conn, self._keys, lease=self._lease, ttl=self._ttl, public_url=self._public_url
            )
        if claimed is None:
            return Step.IDLE
        if isinstance(claimed, NotSent):
            if claimed.skipped is not None:
                metrics.EMAILS.labels("skipped").inc()
                log.info(
                    "email_skipped",
                    submission_id=str(claimed.submission_id),
                    reason=claimed.skipped.value,
                )
            return Step.DONE
        failure = await self._send(session, claimed)
        if failure is None:
            failpoint("mail.after_send")
            await self._durably(lambda conn: record_sent(conn, claimed))
            metrics.EMAILS.labels("sent").inc()
            log.info(
                "email_sent",
                submission_id=str(claimed.submission_id),
                kind=claimed.kind,
                attempts=claimed.attempts,
            )
            return Step.DONE
        await self._record_failure(claimed, failure)
        return Step.SERVER_DOWN if failure.server else Step.DONE

    async def _send(self, session: SmtpSession, claimed: Claim) -> Failure | None:
        """None if the server accepted the email, else what the failure means. The
        exception itself goes no further: its arguments can hold the address."""
        started = time.perf_counter()
        try:
            message = compose(claimed.letter, sender=self._sender)
            async with asyncio.timeout(self._deadline_s):
                await session.send(message)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, none is lost
            failure: Failure | None = classify(exc)
        else:
            failure = None
            metrics.EMAIL_SECONDS.observe(time.perf_counter() - started)
        if failure is not None and failure.server:
            await session.close()
        return failure

    async def _record_failure(self, claimed: Claim, failure: Failure) -> None:
        ids = {"submission_id": str(claimed.submission_id), "kind": claimed.kind}
        if failure.permanent:
            await self._durably(lambda conn: record_undeliverable(conn, claimed, failure.error))
            metrics.EMAILS.labels("undeliverable").inc()
            log.warning("email_undeliverable", **ids, error=failure.error)
            return
        delay = self._retry.delay(claimed.attempts)
        give_up_after = timedelta(seconds=self._retry.give_up_after_s)
        retried = await self._durably(
            lambda conn: record_retry(
                conn, claimed, failure.error, delay=delay, give_up_after=give_up_after
            )
        )
        metrics.EMAILS.labels("retry" if retried else "gave_up").inc()
        log.warning(
            "email_retry" if retried else "email_gave_up",
            **ids,
            error=failure.error,
            attempts=claimed.attempts,
            **({"backoff_s": delay.total_seconds()} if retried else {}),
        )

    async def _durably(self, write: Callable[[Conn], Awaitable[T]]) -> T:
        """Record an outcome, retrying while the database is unreachable. Given up only
        when stopping: the lease then runs out and the row is claimed again."""
        delay = 0.1
        while True:
            try:
                async with self._pool.acquire() as conn:
                    return await write(conn)
            except TRANSIENT as exc:
                if self._stop.is_set():
                    raise
                log.warning("mail_record_retry", error=type(exc).__name__, backoff_s=delay)
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _remind_forever(self) -> None:
        after = timedelta(hours=self._settings.reminder_after_hours)
        interval = min(60.0, max(self._settings.mail_poll_s, after.total_seconds() / 4))
        while not self._stop.is_set():
            try:
                async with self._pool.acquire() as conn:
                    queued = await queue_reminders(conn, after=after)
            except TRANSIENT as exc:  # tried again at the next tick
                log.warning("reminders_failed", error=type(exc).__name__)
            else:
                if queued:
                    metrics.EMAILS_QUEUED.labels("reminder").inc(queued)
                    log.info("reminders_queued", count=queued)
                    self.nudge()
            await self._sleep(interval)

    async def answer_forget_request(self, session: SmtpSession) -> bool:
        """Handle the oldest request to be forgotten; False if there was none."""
        found, letter = await next_request(
            self._pool, public_url=self._public_url, ttl=self._ttl, now=datetime.now(UTC)
        )
        if letter is None:
            return found
        try:
            async with asyncio.timeout(self._deadline_s):
                await session.send(compose_forget(letter, sender=self._sender))
        except Exception as exc:  # noqa: BLE001 - its arguments can hold the address
            await session.close()
            metrics.EMAILS.labels("forget_failed").inc()
            log.warning("forget_email_failed", error=classify(exc).error)
        else:
            metrics.EMAILS.labels("forget_sent").inc()
            log.info("forget_email_sent")
        return True

    async def _forget_requests_forever(self) -> None:
        """One sender of the links that let signers erase themselves."""
        session = SmtpSession(self._settings)
        try:
            while not self._stop.is_set():
                try:
                    handled = await self.answer_forget_request(session)
                except TRANSIENT as exc:
                    log.warning("forget_requests_failed", error=type(exc).__name__)
                    handled = False
                if not handled:
                    await session.close()
                    await self._sleep(self._settings.mail_poll_s)
        finally:
            await session.close()

    async def _wait_for_work(self) -> None:
        if self._wake.is_set():  # queued since this sender last looked
            self._wake.clear()
            return
        waiting = {asyncio.create_task(self._wake.wait()), asyncio.create_task(self._stop.wait())}
        try:
            await asyncio.wait(
                waiting, timeout=self._settings.mail_poll_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in waiting:
                task.cancel()

    async def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
