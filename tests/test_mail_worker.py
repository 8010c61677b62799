"""The mail worker against the real broker, PostgreSQL and a real SMTP server on loopback.

The SMTP server is `runtime.mailbox`: aiosmtpd keeping every message as an .eml file, told
to answer 4xx or 5xx when a test needs it, stopped and started again on the same port for
an outage. Signatures are stored by the real persist worker first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import pytest
import structlog
from aiosmtplib import SMTPRecipientRefused, SMTPRecipientsRefused, SMTPSenderRefused

from consumers.emails import Letter, compose
from consumers.mail import pending_signature
from consumers.mailer import RetryPolicy
from consumers.outbox import MAX_EMAILS
from consumers.service import WorkerKind, run_worker
from consumers.smtp import classify
from consumers.validate import Rejection
from runtime.campaigns import close_campaign, create_campaign
from runtime.kafka import read_to_end
from runtime.mailbox import Mailbox
from runtime.settings import Settings
from runtime.signature_states import change_state
from runtime.topics import ensure_topics
from schemas.campaign import NewCampaign, SignatureState
from schemas.events import DeadLetterHeaders
from tests.conftest import make_settings
from tests.helpers import CAMPAIGN, REQUIRED_CAMPAIGN, encode, produce, submission, wait_until
from tests.processes import Workers

REQ = REQUIRED_CAMPAIGN.slug
PUBLIC_URL = "https://firme.example.net"
LINK = re.compile(re.escape(PUBLIC_URL) + r"/confirm/([a-z0-9-]+\.[A-Za-z0-9_-]{43})")
FAST = RetryPolicy(first_s=0.5, cap_s=1.0)  # seconds, not minutes, between attempts

integration = pytest.mark.integration


# --- pure logic ---------------------------------------------------------------------


def _refused(code: int) -> SMTPRecipientsRefused:
    return SMTPRecipientsRefused([SMTPRecipientRefused(code, "no", "someone@example.org")])


def test_what_a_failed_send_means() -> None:
    assert classify(_refused(550)).permanent
    assert not classify(_refused(451)).permanent
    assert classify(_refused(451)).error == "451"
    # refusing our sender is our configuration, never the signer's address
    sender = classify(SMTPSenderRefused(550, "no", "petizioni@example.net"))
    assert not sender.permanent and sender.server
    refused = classify(ConnectionRefusedError(111, "refused"))
    assert (refused.permanent, refused.error, refused.server) == (
        False,
        "ConnectionRefusedError",
        True,
    )
    # whatever it is, the description holds no address
    for exc in (_refused(550), SMTPSenderRefused(550, "x", "a@example.org"), TimeoutError()):
        assert "@" not in classify(exc).error


def test_the_email_escapes_html_and_never_repeats_the_address_in_its_repr() -> None:
    letter = Letter(
        kind="confirm",
        to="ada@example.org",
        language="it-IT",
        title='Diritti & "libertà" <subito>',
        target="Il <governo>",
        link=f"{PUBLIC_URL}/confirm/x.{'a' * 43}",
        expires_at=datetime(2030, 1, 2, 3, 4, tzinfo=UTC),
    )
    message = compose(letter, sender="Petizioni <petizioni@example.net>")
    html = _part(message, "html")
    assert "Diritti &amp; &quot;libertà&quot; &lt;subito&gt;" in html
    assert "Il &lt;governo&gt;" in html and "<subito>" not in html
    assert 'Diritti & "libertà" <subito>' in _part(message, "plain")
    assert "2 gennaio 2030, 03:04 UTC" in _part(message, "plain")
    assert "ada@example.org" not in repr(letter) and "/confirm/" not in repr(letter)


def test_accepted_events_the_mail_worker_reads() -> None:
    sid = uuid.uuid4()
    assert pending_signature(f'{{"submission_id":"{sid}","state":"pending"}}'.encode()) == sid
    assert pending_signature(f'{{"submission_id":"{sid}","state":"confirmed"}}'.encode()) is None
    for bad in (b"", b"{not json", b"[]", b'{"state":"pending"}', b'{"submission_id":"x"}'):
        assert isinstance(pending_signature(bad), Rejection)


# --- against the real services ---------------------------------------------------------


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[Mailbox]:
    with Mailbox(tmp_path / "mail") as box:
        yield box


@pytest.fixture
async def mail_settings(database_url: str, kafka_bootstrap: str, mailbox: Mailbox) -> Settings:
    s = make_settings(
        database_url,
        kafka_bootstrap,
        mail_group=f"g-{uuid.uuid4().hex[:10]}-mail",
        smtp_host=mailbox.host,
        smtp_port=mailbox.port,
        smtp_tls="off",
        smtp_timeout_s=2.0,
        mail_from="Petizioni <petizioni@example.net>",
        public_url=PUBLIC_URL,
        mail_poll_s=0.2,
    )
    await ensure_topics(s, kafka_bootstrap)
    return s


async def store(settings: Settings, bodies: list[dict[str, Any]]) -> None:
    """Submit and let the real persist worker store them (pending on a required campaign)."""
    await produce(settings, encode(bodies))
    await asyncio.wait_for(
        run_worker(WorkerKind.PERSIST, settings, asyncio.Event(), drain=True), 60
    )


@contextlib.asynccontextmanager
async def mail_worker(settings: Settings, retry: RetryPolicy = FAST) -> AsyncIterator[Until]:
    """A running mail worker, and a wait that fails at once if the worker died."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(WorkerKind.MAIL, settings, stop, mail_retry=retry))

    async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
        async def ready() -> bool:
            if task.done():
                task.result()  # raises what killed it
                raise AssertionError("the mail worker stopped")
            return await condition()

        await wait_until(ready, timeout, interval=0.2)

    try:
        yield until
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


class Until(Protocol):
    """Waits for a condition, failing at once if the worker died."""

    def __call__(
        self, condition: Callable[[], Awaitable[bool]], timeout: float = 60
    ) -> Awaitable[None]: ...


def _part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    assert body is not None and body.get_content_type() == f"text/{subtype}"
    return str(body.get_content())


def by_recipient(box: Mailbox) -> dict[str, list[EmailMessage]]:
    found: dict[str, list[EmailMessage]] = {}
    for message in box.messages():
        found.setdefault(str(message["To"]), []).append(message)
    return found


async def outbox(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM mail_outbox ORDER BY created_at, kind")
    return [dict(row) for row in rows]


async def all_finished(pool: asyncpg.Pool, expected: int) -> bool:
    rows = await outbox(pool)
    return len(rows) == expected and all(row["finished_at"] is not None for row in rows)


async def signature(pool: asyncpg.Pool, body: dict[str, Any]) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT state, emails_sent, persisted_at FROM signatures WHERE submission_id = $1::uuid",
        body["submission_id"],
    )
    assert row is not None
    return dict(row)


async def totals(pool: asyncpg.Pool, campaign: str = REQ) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        "SELECT total, version, pending FROM campaign_totals WHERE campaign = $1", campaign
    )
    assert row is not None
    return row["total"], row["version"], row["pending"]


@integration
async def test_one_email_per_pending_signature_in_the_signers_language(
    mail_settings: Settings, pool: asyncpg.Pool, mailbox: Mailbox
) -> None:
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    await create_campaign(pool, CAMPAIGN)  # confirmation off: counted at once, no email
    italian = submission(campaign=REQ, language="it")
    english = submission(campaign=REQ, language="en-GB")
    unstated = submission(campaign=REQ)  # no language: English
    counted_at_once = submission(campaign=CAMPAIGN.slug, language="it")
    dead = submission(campaign=REQ, email="not-an-email", language="it")
    await store(mail_settings, [italian, english, unstated, counted_at_once, dead])
    # events the mail worker cannot read go to the dead letters, and get no email
    await produce(
        mail_settings,
        [b"{not json", b'{"state":"pending","submission_id":"nope"}'],
        topic=mail_settings.topic_accepted,
    )
    pending = [italian, english, unstated]

    with structlog.testing.capture_logs() as logs:
        async with mail_worker(mail_settings) as until:
            await until(lambda: all_finished(pool, 3))

    received = by_recipient(mailbox)
    assert sorted(received) == sorted(p["email"] for p in pending)
    assert all(len(messages) == 1 for messages in received.values())
    words = {
        italian["email"]: ("Conferma la tua firma", "non verrà contata", "Non sono stato io"),
        english["email"]: ("Confirm your signature", "will not be counted", "This wasn't me"),
        unstated["email"]: ("Confirm your signature", "will not be counted", "This wasn't me"),
    }
    for person in pending:
        [message] = received[person["email"]]
        assert message.get_content_type() == "multipart/alternative"
        assert str(message["From"]) == "Petizioni <petizioni@example.net>"
        assert REQUIRED_CAMPAIGN.title in str(message["Subject"])
        assert str(message["Subject"]).startswith(words[person["email"]][0])
        text, html = _part(message, "plain"), _part(message, "html")
        for part in (text, html):
            assert REQUIRED_CAMPAIGN.title in part and REQUIRED_CAMPAIGN.target in part
            assert all(
                sentence in part.replace("&#x27;", "'") for sentence in words[person["email"]][1:]
            )
            assert "UTC" in part  # when the link expires
        [token] = set(LINK.findall(text))
        assert f'href="{PUBLIC_URL}/confirm/{token}"' in html
        stored = await pool.fetchrow(
            "SELECT submission_id, campaign, expires_at, used_at FROM confirmation_tokens "
            "WHERE token_hash = $1",
            hashlib.sha256(token.encode()).digest(),
        )
        assert stored is not None
        assert (str(stored["submission_id"]), stored["campaign"]) == (person["submission_id"], REQ)
        assert stored["used_at"] is None
        ttl = timedelta(hours=mail_settings.confirmation_ttl_hours)
        assert abs(stored["expires_at"] - (datetime.now(UTC) + ttl)) < timedelta(minutes=2)
        stored_signature = await signature(pool, person)
        assert (stored_signature["state"], stored_signature["emails_sent"]) == ("pending", 1)
    rows = await outbox(pool)
    assert {(r["kind"], r["outcome"], r["attempts"]) for r in rows} == {("confirm", "sent", 1)}

    # the worker's own dead letters: the two events it could not read, nothing else
    dead_letters = [
        DeadLetterHeaders.from_kafka(list(r.headers))
        for r in await read_to_end(mail_settings, mail_settings.topic_rejected)
    ]
    from_accepted = [h for h in dead_letters if h.origin_topic == mail_settings.topic_accepted]
    assert sorted(h.reason.value for h in from_accepted) == ["malformed_json"] * 2

    # no address and no link in any log line of the worker
    text_of_logs = repr(logs)
    for person in [*pending, counted_at_once, dead]:
        assert person["email"] not in text_of_logs
    assert "/confirm/" not in text_of_logs
    assert any(line["event"] == "email_sent" for line in logs)

    # every event again (a new group reads the topic from its start): nothing more is sent
    again = mail_settings.model_copy(update={"mail_group": mail_settings.mail_group + "-again"})
    await asyncio.wait_for(run_worker(WorkerKind.MAIL, again, asyncio.Event(), drain=True), 60)
    assert len(mailbox.paths()) == 3
    assert len(await outbox(pool)) == 3


@integration
async def test_smtp_down_then_back_loses_nothing(
    mail_settings: Settings, pool: asyncpg.Pool, mailbox: Mailbox
) -> None:
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    people = [submission(campaign=REQ) for _ in range(4)]
    await store(mail_settings, people)
    mailbox.stop()  # nothing listens on its port now

    async def every_row_failed_once() -> bool:
        rows = await outbox(pool)
        return len(rows) == 4 and all(r["last_error"] for r in rows)

    async with mail_worker(mail_settings) as until:
        await until(every_row_failed_once)
        rows = await outbox(pool)
        assert all(r["outcome"] is None and r["due_at"] > r["created_at"] for r in rows)
        assert {r["last_error"] for r in rows} <= {"SMTPConnectError", "ConnectionRefusedError"}
        assert mailbox.paths() == []
        mailbox.start()  # the same port again
        await until(lambda: all_finished(pool, 4))

    received = by_recipient(mailbox)
    assert sorted(received) == sorted(p["email"] for p in people)
    assert all(len(messages) == 1 for messages in received.values())
    assert {r["outcome"] for r in await outbox(pool)} == {"sent"}
    assert {(await signature(pool, p))["state"] for p in people} == {"pending"}


@integration
async def test_a_5xx_makes_the_signature_undeliverable_and_changes_nothing_public(
    mail_settings: Settings, pool: asyncpg.Pool, mailbox: Mailbox
) -> None:
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    refused, accepted = submission(campaign=REQ), submission(campaign=REQ)
    await store(mail_settings, [refused, accepted])
    total, version, pending = await totals(pool)
    assert pending == 2
    mailbox.answer(550, [refused["email"]])

    async with mail_worker(mail_settings) as until:
        await until(lambda: all_finished(pool, 2))

    assert list(by_recipient(mailbox)) == [accepted["email"]]
    assert (await signature(pool, refused))["state"] == "undeliverable"
    assert (await signature(pool, accepted))["state"] == "pending"
    outcomes = {
        str(r["submission_id"]): (r["outcome"], r["last_error"]) for r in await outbox(pool)
    }
    assert outcomes == {
        refused["submission_id"]: ("undeliverable", "550"),
        accepted["submission_id"]: ("sent", None),
    }
    # nothing public moved; only the operators' pending count
    assert await totals(pool) == (total, version, pending - 1)


@integration
async def test_a_4xx_for_one_recipient_holds_up_no_one_else(
    mail_settings: Settings, pool: asyncpg.Pool, mailbox: Mailbox
) -> None:
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    greylisted = submission(campaign=REQ)
    others = [submission(campaign=REQ) for _ in range(3)]
    await store(mail_settings, [greylisted, *others])
    mailbox.answer(451, [greylisted["email"]])

    async def others_delivered_while_it_keeps_failing() -> bool:
        row = await pool.fetchrow(
            "SELECT attempts, last_error FROM mail_outbox WHERE submission_id = $1::uuid",
            greylisted["submission_id"],
        )
        return (
            row is not None
            and row["attempts"] >= 2
            and row["last_error"] == "451"
            and len(mailbox.paths()) == 3
        )

    async with mail_worker(mail_settings) as until:
        await until(others_delivered_while_it_keeps_failing)
        assert sorted(by_recipient(mailbox)) == sorted(p["email"] for p in others)
        mailbox.answer(None)
        await until(lambda: all_finished(pool, 4))

    received = by_recipient(mailbox)
    assert len(received[greylisted["email"]]) == 1
    assert all(len(messages) == 1 for messages in received.values())
    row = await signature(pool, greylisted)
    assert (row["state"], row["emails_sent"]) == ("pending", 1)


@integration
async def test_transient_failures_are_given_up_after_about_a_day(
    mail_settings: Settings, pool: asyncpg.Pool, mailbox: Mailbox
) -> None:
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    person = submission(campaign=REQ)
    await store(mail_settings, [person])
    total, version, pending = await totals(pool)
    mailbox.answer(451)  # "try again later", for good

    async def failed_once() -> bool:
        rows = await outbox(pool)
        return bool(rows) and rows[0]["last_error"] == "451"

    async with mail_worker(mail_settings) as until:
        await until(failed_once)
        assert (await signature(pool, person))["state"] == "pending"
        # as if it had been queued a day and an hour ago: the next failure is the last
        await pool.execute("UPDATE mail_outbox SET created_at = created_at - interval '25 hours'")
        await until(lambda: all_finished(pool, 1))

    [row] = await outbox(pool)
    assert (row["outcome"], row["last_error"]) == ("gave_up", "451")
    assert row["attempts"] >= 2
    assert (await signature(pool, person))["state"] == "undeliverable"
    assert await totals(pool) == (total, version, pending - 1)
    assert mailbox.paths() == []


@integration
async def test_at_most_five_emails_for_a_person_who_signs_eight_times(
    mail_settings: Settings, pool: asyncpg.Pool, mailbox: Mailbox
) -> None:
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    first = submission(campaign=REQ, email="Ripetuta.Persona@example.org")
    variants = ["ripetuta.persona@example.org", "RIPETUTA.PERSONA@EXAMPLE.ORG"]
    repeats = [submission(campaign=REQ, email=variants[n % 2]) for n in range(7)]
    await store(mail_settings, [first, *repeats])

    async with mail_worker(mail_settings) as until:
        await until(lambda: all_finished(pool, 8))

    assert len(mailbox.paths()) == MAX_EMAILS == 5
    rows = await outbox(pool)
    assert Counter(r["kind"] for r in rows) == {"confirm": 1, "resend": 7}
    assert Counter(r["outcome"] for r in rows) == {"sent": 5, "skipped": 3}
    assert (await signature(pool, first))["emails_sent"] == 5
    # each email has its own working link, all bound to the one stored signature
    tokens = {LINK.findall(_part(m, "plain"))[0] for m in mailbox.messages()}
    bound = await pool.fetch(
        "SELECT DISTINCT submission_id FROM confirmation_tokens WHERE token_hash = ANY($1)",
        [hashlib.sha256(t.encode()).digest() for t in tokens],
    )
    assert len(tokens) == 5
    assert [str(r["submission_id"]) for r in bound] == [first["submission_id"]]


@integration
async def test_one_reminder_after_the_configured_delay(
    mail_settings: Settings, pool: asyncpg.Pool, mailbox: Mailbox
) -> None:
    delay = timedelta(seconds=4)
    settings = mail_settings.model_copy(
        update={"reminder_after_hours": delay.total_seconds() / 3600}
    )
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    waiting, confirms, closed_campaign = (
        submission(campaign=REQ, language="it"),
        submission(campaign=REQ),
        submission(campaign="chiusa"),
    )
    closing = NewCampaign(slug="chiusa", title="Chiusa", target="Qualcuno", goal=10)
    await create_campaign(pool, closing)
    await store(settings, [waiting, confirms, closed_campaign])

    async def first_emails_sent() -> bool:
        return len(mailbox.paths()) == 3

    async def reminded() -> bool:
        rows = await outbox(pool)
        return any(r["kind"] == "reminder" for r in rows) and all(r["finished_at"] for r in rows)

    async with mail_worker(settings) as until:
        await until(first_emails_sent)
        # one confirms, one campaign closes: neither gets a reminder email
        async with pool.acquire() as conn, conn.transaction():
            await change_state(
                conn,
                [uuid.UUID(confirms["submission_id"])],
                SignatureState.CONFIRMED,
                allowed_from={SignatureState.PENDING},
            )
        await close_campaign(pool, "chiusa")
        await until(reminded)
        await asyncio.sleep(3 * delay.total_seconds())  # several more reminder rounds

    rows = await outbox(pool)
    assert all(r["finished_at"] for r in rows)
    reminders = {str(r["submission_id"]): r for r in rows if r["kind"] == "reminder"}
    reminder = reminders.pop(waiting["submission_id"])
    assert reminder["outcome"] == "sent"
    assert reminder["created_at"] >= (await signature(pool, waiting))["persisted_at"] + delay
    # queued before the confirmation or the close, a reminder is skipped when it is due
    assert {r["outcome"] for r in reminders.values()} <= {"skipped"}
    received = by_recipient(mailbox)
    assert len(received[waiting["email"]]) == 2
    assert len(received[confirms["email"]]) == len(received[closed_campaign["email"]]) == 1
    subjects = [str(m["Subject"]) for m in received[waiting["email"]]]
    assert subjects[0].startswith("Conferma") and subjects[1].startswith("Promemoria")
    assert (await signature(pool, waiting))["emails_sent"] == 2


@integration
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_killed_between_send_and_record_sends_at_most_one_extra(
    mail_settings: Settings, pool: asyncpg.Pool, mailbox: Mailbox, tmp_path: Path
) -> None:
    await create_campaign(pool, REQUIRED_CAMPAIGN)
    people = [submission(campaign=REQ) for _ in range(6)]
    await store(mail_settings, people)
    settings = mail_settings.model_copy(update={"mail_concurrency": 1, "smtp_timeout_s": 1.0})
    workers = Workers(tmp_path, settings)
    try:
        doomed = await workers.start("mail", "mail-1", failpoints="mail.after_send=1*kill")
        assert await doomed.exit_code(timeout=90) == -9
        assert doomed.lines("failpoint")
        # the server has the email; the database does not know yet
        assert len(mailbox.paths()) == 1
        assert await pool.fetchval("SELECT count(*) FROM mail_outbox WHERE outcome = 'sent'") == 0
        again = await workers.start("mail", "mail-2")
        await wait_until(lambda: all_finished(pool, 6), timeout=150)
        assert again.running
    finally:
        await workers.stop_all()

    received = by_recipient(mailbox)
    assert sorted(received) == sorted(p["email"] for p in people)  # nobody was lost
    extra = sum(len(messages) - 1 for messages in received.values())
    assert extra <= 1
    rows = await outbox(pool)
    assert {r["outcome"] for r in rows} == {"sent"}
    # the email whose record the kill prevented was claimed again once its lease ran out
    assert sorted(r["attempts"] for r in rows) == [1] * 5 + [2]
    for line in (*doomed.lines(), *again.lines()):
        assert "@" not in str(line.get("error", "")) and "/confirm/" not in repr(line)
