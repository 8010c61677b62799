"""A worker process: clients, handler and runner wired together, with a clean shutdown.

The counter and the mail worker also run a task beside the runner (the totals poll, the
outbox sender); if that task dies, the worker stops rather than run half-way.

Shutdown: SIGINT/SIGTERM only set an event. The batch in flight gets the grace period
to finish and commit; after that it is cancelled (its offsets stay uncommitted, so it is
redelivered and, the writes being idempotent, changes nothing). A second Ctrl-C kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from enum import StrEnum

import asyncpg
from aiokafka import AIOKafkaProducer

from consumers.count import CountHandler
from consumers.flags import FlagRules
from consumers.mail import MailHandler
from consumers.mailer import Mailer, RetryPolicy
from consumers.persist import PersistHandler
from consumers.runner import BatchHandler, Runner, RunnerStats
from runtime.db import check_dedupe_key, create_pool
from runtime.kafka import make_consumer, make_producer
from runtime.logs import get_logger
from runtime.pii import DataKeys, check_master_key
from runtime.settings import Settings
from runtime.topics import Topics

log = get_logger("consumers.service")

# For `signatures bench` only, to measure what encryption costs in the same run: a persist
# worker started with this variable set to 1 stores names, email and postcode in blobs of
# the same size that are NOT encrypted (and that nothing can read back). Never set it
# anywhere else; it is not a setting, and a worker that honours it logs a warning.
MEASURE_WITHOUT_ENCRYPTION = "SIGNATURES_MEASURE_WITHOUT_ENCRYPTION"


class WorkerKind(StrEnum):
    PERSIST = "persist"
    COUNT = "count"
    MAIL = "mail"


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def first_signal(signum: int) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()
        # A second Ctrl-C is the user insisting: default behaviour, immediate exit.
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, first_signal, signum)


async def run_worker(
    kind: WorkerKind,
    settings: Settings,
    stop: asyncio.Event,
    *,
    drain: bool = False,
    mail_retry: RetryPolicy | None = None,
) -> RunnerStats:
    if kind is WorkerKind.MAIL:
        settings.require_mail()  # a clear error before connecting to anything
    # the persist worker encrypts names, email and postcode; the mail worker decrypts the
    # address it sends to. The counter never sees them.
    keys = DataKeys(settings.require_master_keys()) if kind is not WorkerKind.COUNT else None
    topics = Topics.from_settings(settings)
    # the mail worker's senders each hold a connection while they claim and record
    senders = settings.mail_concurrency if kind is WorkerKind.MAIL else 0
    pool = await create_pool(settings.database_url_for("worker"), max_size=2 + senders)
    producer = make_producer(settings)
    handler: BatchHandler
    poller: asyncio.Task[None] | None = None
    mailer: Mailer | None = None
    try:
        await producer.start()
        if kind is WorkerKind.PERSIST:
            handler = await _persist_handler(
                settings, pool, producer, topics, await _checked(pool, keys)
            )
            group, topic = settings.persist_group, topics.submitted
        elif kind is WorkerKind.MAIL:
            mailer = Mailer(pool, settings, await _checked(pool, keys), mail_retry)
            handler = MailHandler(pool, producer, topics, on_queued=mailer.nudge)
            group, topic = settings.mail_group, topics.accepted
            if not drain:
                poller = asyncio.create_task(mailer.run(stop))
        else:
            counter = CountHandler(
                pool, producer, topics, public_min_count=settings.public_min_count
            )
            handler = counter
            group, topic = settings.count_group, topics.accepted
            await counter.publish_changed()
            if not drain:
                poller = asyncio.create_task(counter.poll_forever(settings.totals_poll_s, stop))
        consumer = make_consumer(settings, group)
        await consumer.start()
        try:
            runner = Runner(
                consumer,
                [topic],
                handler,
                max_records=settings.batch_max_records,
                timeout_ms=settings.batch_timeout_ms,
                stop=stop,
                drain=drain,
            )
            log.info("worker_started", worker=kind.value, group=group, topic=topic)
            await _run_until_stopped(runner, stop, poller, settings.shutdown_grace_s, kind)
            if kind is WorkerKind.COUNT and drain:
                await counter.publish_changed()
            if mailer is not None and drain:
                await mailer.send_until_idle()
            log.info(
                "worker_stopped",
                worker=kind.value,
                batches=runner.stats.batches,
                records=runner.stats.records,
                outcomes=runner.stats.outcomes,
            )
            return runner.stats
        finally:
            await consumer.stop()
    finally:
        if poller is not None:
            stop.set()
            await poller
        await producer.stop()
        await pool.close()


async def _persist_handler(
    settings: Settings,
    pool: asyncpg.Pool,
    producer: AIOKafkaProducer,
    topics: Topics,
    keys: DataKeys,
) -> PersistHandler:
    secret = settings.require_dedupe_secret()
    await check_dedupe_key(pool, secret)
    encrypt = os.environ.get(MEASURE_WITHOUT_ENCRYPTION) != "1"
    if not encrypt:
        log.warning("pii_not_encrypted", reason=f"{MEASURE_WITHOUT_ENCRYPTION}=1")
    return PersistHandler(
        pool, producer, topics, secret, settings.max_record_bytes, keys,
        FlagRules.from_settings(settings), encrypt=encrypt,
    )  # fmt: skip


async def _checked(pool: asyncpg.Pool, keys: DataKeys | None) -> DataKeys:
    """The data keys, once the master key is known to open the stored ones."""
    if keys is None:
        raise RuntimeError("this worker needs the data keys")
    await check_master_key(pool, keys.keyring)
    return keys


async def _run_until_stopped(
    runner: Runner,
    stop: asyncio.Event,
    poller: asyncio.Task[None] | None,
    grace_s: float,
    kind: WorkerKind,
) -> None:
    """Run until done or stopped; then the batch in flight gets the grace period."""
    task = asyncio.create_task(runner.run())
    stop_wait = asyncio.create_task(stop.wait())
    watched = {task, stop_wait} | ({poller} if poller is not None else set())
    await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    if poller is not None and poller.done() and not stop.is_set():
        died = "mail_sender_died" if kind is WorkerKind.MAIL else "totals_poll_died"
        log.error(died, worker=kind.value)
        stop.set()  # stop now; awaiting the poller afterwards raises its error
    if not task.done():
        done, _ = await asyncio.wait({task}, timeout=grace_s)
        if not done:
            log.warning("grace_period_over", worker=kind.value)
            task.cancel()
    stop_wait.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
